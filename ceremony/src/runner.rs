//! Running a script: each step in order, each person's acts through the
//! service under their own authenticated name, every step recorded in the
//! trail as it happens (`ceremony.step`), and a signed transcript at the end
//! (`ceremony.transcript`) whatever the outcome.
//!
//! Clean abort: any failure, or a "no" at any confirmation, stops the run.
//! Components already typed are dropped (their buffers zeroize), nothing is
//! created from them, a request already made is left unexecuted (it
//! expires), and the transcript says where and why the run stopped.

use crate::console::{Console, ConsoleError, Field, Question};
use crate::script::SealAct;
use crate::script::{fill, OperationKind, Script, ScriptError, Step};
use crate::service::Kms;
use kms::crypto::{
    combine, verify_component_kcv, verify_key_kcv, Component, Kcv, KcvMethod, Share,
};
use kms::model::{Algorithm, CustodianRole, Pin};
use kms::service::ceremony::{
    Participant, SignedTranscript, StepOutcome, Transcript, TranscriptStep, TRANSCRIPT_FORMAT,
};
use kms::service::{
    Actor, ApprovalRequest, BackupFile, ComponentsIssued, CustodianSession, Executed,
    GeneratedComponents, Operation, ServiceError,
};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The ceremony cannot start in this build.
    #[error("step {step} ({kind}): not yet: {why}")]
    NotYet {
        step: usize,
        kind: &'static str,
        why: &'static str,
    },
}

/// Why a run stopped early (shown, and written in the transcript).
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("{0}")]
    Said(String),
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Console(#[from] ConsoleError),
    #[error("{0}")]
    Approval(#[from] crate::approval::ApprovalInputError),
}

impl From<kms::crypto::ComponentError> for Abort {
    fn from(e: kms::crypto::ComponentError) -> Abort {
        Abort::Service(e.into())
    }
}

fn no(what: impl Into<String>) -> Abort {
    Abort::Said(what.into())
}

/// Someone present, and when they last did something.
struct Present {
    session: CustodianSession,
    last_activity: OffsetDateTime,
}

struct Run<'a> {
    script: &'a Script,
    /// For idle timeouts.
    clock: &'a (dyn Fn() -> OffsetDateTime + Sync),
    params: BTreeMap<String, String>,
    kms: &'a mut Kms,
    console: &'a mut dyn Console,
    run_id: String,
    /// Names of the people of each role, in order.
    roles: BTreeMap<String, Vec<String>>,
    present: BTreeMap<String, Present>,
    people: Vec<Participant>,
    steps: Vec<TranscriptStep>,
    request: Option<ApprovalRequest>,
    executed: bool,
    /// Components typed so far (zeroized when dropped), and the check
    /// value each was confirmed against.
    components: Vec<Component>,
    component_kcvs: Vec<Option<Kcv>>,
    /// Unseal shares presented (zeroized when dropped).
    shares: Vec<Share>,
    /// Components of a key generated for export, until each is handed to
    /// its custodian (zeroized when dropped), and what may be shown of
    /// them.
    generated: Option<GeneratedComponents>,
    issued: Option<ComponentsIssued>,
    /// The backup file of a recovery, once its KEK is back: the user's
    /// login on the new token needs it (the audit MAC key is in it).
    backup_file: Option<BackupFile>,
    /// Steps taken while the KMS was sealed (no token, so the service could
    /// not record them; the unsealer recorded each presentation): written
    /// to the trail once it opens.
    unrecorded: Vec<TranscriptStep>,
    step_no: usize,
}

/// The role of the custodians who unseal a sealed KMS before a script
/// that does not begin with its own `shares-in` step.
pub const UNSEAL_ROLE: &str = "unseal";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Refuse a script whose steps this build cannot run, before anyone types.
pub fn preflight(script: &Script) -> Result<(), RunError> {
    for (i, step) in script.steps.iter().enumerate() {
        if let Some(why) = step.not_yet() {
            return Err(RunError::NotYet {
                step: i + 1,
                kind: step.kind(),
                why,
            });
        }
    }
    Ok(())
}

/// Run `script` with `given` parameters. Answers the signed, recorded
/// transcript, also when the ceremony aborted (its outcome says so); an
/// error means the run could not start, or its transcript could not be
/// recorded.
pub async fn run(
    script: &Script,
    given: &BTreeMap<String, String>,
    kms: &mut Kms,
    console: &mut dyn Console,
) -> Result<SignedTranscript, RunError> {
    run_with_clock(script, given, kms, console, &now).await
}

/// As [`run`], with the clock that decides whether a person has been idle
/// too long (tests pass one that runs fast).
pub async fn run_with_clock(
    script: &Script,
    given: &BTreeMap<String, String>,
    kms: &mut Kms,
    console: &mut dyn Console,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Result<SignedTranscript, RunError> {
    preflight(script)?;
    let params = script.resolve_params(given)?;
    let started_at = rfc3339(now());
    let mut run = Run {
        script,
        clock,
        params,
        kms,
        console,
        run_id: uuid::Uuid::new_v4().to_string(),
        roles: BTreeMap::new(),
        present: BTreeMap::new(),
        people: Vec::new(),
        steps: Vec::new(),
        request: None,
        executed: false,
        components: Vec::new(),
        component_kcvs: Vec::new(),
        shares: Vec::new(),
        generated: None,
        issued: None,
        backup_file: None,
        unrecorded: Vec::new(),
        step_no: 0,
    };
    run.console.say(&format!(
        "=== Ceremony: {} ({}) ===\nRun {}\n{}",
        script.title,
        script.name,
        run.run_id,
        script.purpose.trim()
    ));
    let mut abort_reason = None;
    let unseals_itself = script
        .steps
        .iter()
        .find(|s| !matches!(s, Step::Announce { .. }))
        .is_some_and(|s| matches!(s, Step::SharesIn { .. }));
    if run.kms.is_sealed() && !unseals_itself {
        run.console.say(&format!(
            "\n--- Before step 1: the KMS is sealed; {} custodians present their shares ---",
            run.kms.seal_threshold().unwrap_or(0)
        ));
        if let Err(e) = run.shares_in(UNSEAL_ROLE).await {
            let reason = e.to_string();
            run.console
                .say(&format!("\nABORTED while unsealing: {reason}"));
            abort_reason = Some(reason);
        }
    }
    for (i, step) in script.steps.iter().enumerate() {
        if abort_reason.is_some() {
            break;
        }
        run.step_no = i + 1;
        if let Some(text) = step.text() {
            let text = fill(text, &run.params);
            run.console.say(&format!(
                "\n--- Step {}: {} ---\n{text}",
                i + 1,
                step.kind()
            ));
        } else {
            run.console
                .say(&format!("\n--- Step {}: {} ---", i + 1, step.kind()));
        }
        if let Err(e) = run.step(step).await {
            let reason = e.to_string();
            run.console
                .say(&format!("\nABORTED at step {}: {reason}", i + 1));
            // Recorded best effort: the transcript carries it in any case.
            let _ = run
                .record(step.kind(), None, StepOutcome::Aborted, {
                    let mut d = BTreeMap::new();
                    d.insert("reason".to_owned(), reason.clone());
                    d
                })
                .await;
            abort_reason = Some(reason);
            break;
        }
    }
    run.finish(started_at, abort_reason).await
}

impl Run<'_> {
    fn question(&self, role: &str, slot: usize, person: Option<&str>, field: Field) -> Question {
        Question {
            step: self.step_no,
            role: role.to_owned(),
            slot,
            person: person.map(str::to_owned),
            field,
            prompt: String::new(),
        }
    }

    fn param(&self, k: &str) -> Result<&str, Abort> {
        self.params
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| no(format!("parameter {k} is not set")))
    }

    fn algorithm(&self) -> Result<Algorithm, Abort> {
        Ok(self
            .param("algorithm")?
            .parse::<Algorithm>()
            .map_err(ServiceError::from)?)
    }

    /// Write a step to the trail (fail closed) and the transcript.
    async fn record(
        &mut self,
        kind: &str,
        actor: Option<&str>,
        outcome: StepOutcome,
        details: BTreeMap<String, String>,
    ) -> Result<(), Abort> {
        let step = TranscriptStep {
            index: self.step_no as u32,
            kind: kind.to_owned(),
            at: rfc3339(now()),
            actor: actor.map(str::to_owned),
            outcome,
            details,
        };
        self.steps.push(step.clone());
        if self.kms.is_sealed() {
            self.unrecorded.push(step);
            return Ok(());
        }
        self.kms
            .svc()?
            .record_ceremony_step(&self.script.name, &self.run_id, &step)
            .await?;
        Ok(())
    }

    fn names(&self, role: &str) -> Result<Vec<String>, Abort> {
        self.roles
            .get(role)
            .cloned()
            .ok_or_else(|| no(format!("nobody of role {role} has logged in")))
    }

    /// The session of `name`, asking for the PIN again when they have been
    /// idle longer than their idle timeout.
    async fn active(
        &mut self,
        role: &str,
        slot: usize,
        name: &str,
    ) -> Result<CustodianSession, Abort> {
        let t = (self.clock)();
        let expired = match self.present.get(name) {
            Some(p) => p.session.idle_expired(p.last_activity, t),
            None => return Err(no(format!("{name} has not logged in"))),
        };
        if expired {
            self.console.say(&format!(
                "{name} has been idle longer than their idle timeout: PIN again."
            ));
            let mut q = self.question(role, slot, Some(name), Field::Pin);
            q.prompt = format!("PIN for {name} (hidden): ");
            let pin = Pin::from(self.console.ask_secret(&q)?);
            let session = self.kms.svc()?.authenticate(name, &pin, now()).await?;
            drop(pin);
            if session.must_change_pin() {
                return Err(no(format!("{name} must change their PIN first")));
            }
            self.present.insert(
                name.to_owned(),
                Present {
                    session,
                    last_activity: (self.clock)(),
                },
            );
            let mut d = BTreeMap::new();
            d.insert("reason".to_owned(), "idle timeout".to_owned());
            self.record("authenticate", Some(name), StepOutcome::Done, d)
                .await?;
        }
        let p = self
            .present
            .get_mut(name)
            .ok_or_else(|| no(format!("{name} has not logged in")))?;
        p.last_activity = (self.clock)();
        Ok(p.session.clone())
    }

    async fn confirm(
        &mut self,
        role: &str,
        slot: usize,
        who: Option<&str>,
        prompt: String,
    ) -> Result<(), Abort> {
        let mut q = self.question(role, slot, who, Field::Confirm);
        q.prompt = prompt;
        if self.console.confirm(&q)? {
            Ok(())
        } else {
            Err(no(format!("{} answered no", who.unwrap_or("the room"))))
        }
    }

    async fn step(&mut self, step: &Step) -> Result<(), Abort> {
        match step {
            Step::Announce { .. } => {
                self.record("announce", None, StepOutcome::Done, BTreeMap::new())
                    .await
            }
            Step::Authenticate { role, .. } => self.authenticate(role).await,
            Step::Request {
                role,
                operation,
                holders,
                ..
            } => self.request(role, *operation, holders.as_deref()).await,
            Step::Approve { role, .. } => self.approve(role).await,
            Step::Component { role, person, .. } => self.component(role, *person).await,
            Step::ConfirmKcv { .. } => self.confirm_kcv().await,
            Step::Execute { role, .. } => self.execute(role).await,
            Step::CloseFounding { role, .. } => self.close_founding(role).await,
            Step::SharesIn { role, .. } => self.shares_in(role).await,
            Step::Backup { role, .. } => self.backup(role).await,
            Step::BackupKek {
                role,
                by,
                approvers,
                ..
            } => self.backup_kek(role, by, approvers).await,
            Step::SharesOut { role, by, seal, .. } => self.shares_out(role, by, *seal).await,
            Step::ComponentsOut { role, .. } => self.components_out(role).await,
            Step::KekRecover { role, by, .. } => self.kek_recover(role, by).await,
            Step::Restore { role, .. } => self.restore(role).await,
        }
    }

    async fn authenticate(&mut self, role: &str) -> Result<(), Abort> {
        let spec = self
            .script
            .roles
            .get(role)
            .ok_or_else(|| no(format!("role {role} is not declared")))?
            .clone();
        let wanted: CustodianRole = spec.enrolled.parse().map_err(ServiceError::from)?;
        let mut names = Vec::new();
        for slot in 0..spec.count as usize {
            let mut q = self.question(role, slot, None, Field::Name);
            q.prompt = format!("{role} {} of {}: your name: ", slot + 1, spec.count);
            let name = self.console.ask(&q)?;
            if self.present.contains_key(&name) {
                return Err(no(format!(
                    "{name} is already taking part: each place is a different person"
                )));
            }
            let mut q = self.question(role, slot, Some(&name), Field::Pin);
            q.prompt = format!("PIN for {name} (hidden): ");
            let pin = Pin::from(self.console.ask_secret(&q)?);
            let mut session = self.kms.svc()?.authenticate(&name, &pin, now()).await?;
            if session.must_change_pin() {
                self.console.say(&format!(
                    "{name} logs in for the first time: the initial PIN must be changed now (AUTH-PIN-LEN, AUTH-PIN-WEAK)."
                ));
                let mut q = self.question(role, slot, Some(&name), Field::NewPin);
                q.prompt = format!("New PIN for {name} (hidden): ");
                let new = Pin::from(self.console.ask_secret(&q)?);
                let mut q = self.question(role, slot, Some(&name), Field::NewPinAgain);
                q.prompt = format!("New PIN for {name} again (hidden): ");
                let again = Pin::from(self.console.ask_secret(&q)?);
                if new.expose() != again.expose() {
                    return Err(no(format!("the two new PINs of {name} differ")));
                }
                session = self.kms.svc()?.change_pin(&name, &pin, &new, now()).await?;
                self.console.say(&format!("{name}'s PIN changed."));
            }
            drop(pin);
            if session.role() != wanted {
                return Err(no(format!(
                    "{name} is enrolled as {}, this place needs a {}",
                    session.role(),
                    wanted
                )));
            }
            self.console
                .say(&format!("{name} ({}) logged in.", session.role()));
            let mut d = BTreeMap::new();
            d.insert("role".to_owned(), role.to_owned());
            d.insert("enrolled_as".to_owned(), session.role().to_string());
            self.record("authenticate", Some(&name), StepOutcome::Done, d)
                .await?;
            self.people.push(Participant {
                name: name.clone(),
                role: role.to_owned(),
                enrolled_as: session.role().to_string(),
            });
            self.present.insert(
                name.clone(),
                Present {
                    session,
                    last_activity: (self.clock)(),
                },
            );
            names.push(name);
        }
        self.roles.insert(role.to_owned(), names);
        Ok(())
    }

    fn operation(&self, kind: OperationKind, holders: Option<&str>) -> Result<Operation, Abort> {
        let opt = |k: &str| self.params.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(match kind {
            OperationKind::Export => Operation::Export {
                tenant: self.param("tenant")?.to_owned(),
                key: self.param("key")?.to_owned(),
                version: opt("version")
                    .map(|v| v.parse::<u32>())
                    .transpose()
                    .map_err(|_| no("parameter version is a number"))?,
                kek: self.param("kek")?.to_owned(),
                wrap: opt("wrap"),
            },
            OperationKind::Destroy => Operation::Destroy {
                tenant: self.param("tenant")?.to_owned(),
                key: self.param("key")?.to_owned(),
                version: self
                    .param("version")?
                    .parse::<u32>()
                    .map_err(|_| no("parameter version is a number"))?,
                reason: opt("reason"),
            },
            OperationKind::ImportKey => Operation::ImportKey {
                tenant: self.param("tenant")?.to_owned(),
                key: self.param("key")?.to_owned(),
                algorithm: self.param("algorithm")?.to_owned(),
                usage: self.param("usage")?.to_owned(),
                exportable: self.params.get("exportable").is_some_and(|v| v == "true"),
                kcv: self.param("kcv")?.to_owned(),
            },
            OperationKind::TrustedKek => Operation::TrustedKek {
                tenant: self.param("tenant")?.to_owned(),
                key: self.param("key")?.to_owned(),
                algorithm: self.param("algorithm")?.to_owned(),
                usage: self.param("usage")?.to_owned(),
                kcv: opt("kcv"),
            },
            OperationKind::ExportComponents => Operation::ExportComponents {
                tenant: self.param("tenant")?.to_owned(),
                key: self.param("key")?.to_owned(),
                algorithm: self.param("algorithm")?.to_owned(),
                usage: self.param("usage")?.to_owned(),
                exportable: self.params.get("exportable").is_some_and(|v| v == "true"),
                custodians: self
                    .names(holders.ok_or_else(|| no("export-components names no holders"))?)?,
            },
        })
    }

    async fn request(
        &mut self,
        role: &str,
        kind: OperationKind,
        holders: Option<&str>,
    ) -> Result<(), Abort> {
        let op = self.operation(kind, holders)?;
        let names = self.names(role)?;
        let name = names.first().ok_or_else(|| no("nobody to request"))?;
        let who = self.active(role, 0, name).await?;
        let req = self.kms.svc()?.request(&who, op).await?;
        self.console.say(&format!(
            "{name} requested:\n  request   {}\n  operation {}\n  digest    {}\n  expires   {}\nApprovers: compare the digest on your own screen.",
            req.id,
            req.operation.canonical()?,
            req.digest,
            rfc3339(req.expires_at)
        ));
        let mut d = BTreeMap::new();
        d.insert("request".to_owned(), req.id.clone());
        d.insert("digest".to_owned(), req.digest.clone());
        d.insert(
            "operation".to_owned(),
            format!("{:?}", req.operation.action()).to_lowercase(),
        );
        self.record("request", Some(name), StepOutcome::Done, d)
            .await?;
        self.request = Some(req);
        Ok(())
    }

    async fn approve(&mut self, role: &str) -> Result<(), Abort> {
        let req = self
            .request
            .clone()
            .ok_or_else(|| no("there is no request to approve"))?;
        let names = self.names(role)?;
        for (slot, name) in names.iter().enumerate() {
            let after = self.approve_as(role, slot, name, &req).await?;
            self.request = Some(after);
        }
        Ok(())
    }

    /// One person's signed approval of `req`, after they confirmed exactly
    /// its operation and digest.
    async fn approve_as(
        &mut self,
        role: &str,
        slot: usize,
        name: &str,
        req: &ApprovalRequest,
    ) -> Result<ApprovalRequest, Abort> {
        let who = self.active(role, slot, name).await?;
        self.console.say(&format!(
            "{name}: you are asked to approve\n  {}\n  digest {}",
            req.operation.canonical()?,
            req.digest
        ));
        self.confirm(
            role,
            slot,
            Some(name),
            format!("{name}: approve exactly this operation?"),
        )
        .await?;
        let mut key_q = self.question(role, slot, Some(name), Field::ApprovalKey);
        key_q.prompt = format!("{name}: your approval signing key file (PEM): ");
        let mut cert_q = self.question(role, slot, Some(name), Field::ApprovalCert);
        cert_q.prompt = format!("{name}: your certificate file: ");
        let after =
            crate::approval::approve(self.kms.svc()?, self.console, &key_q, &cert_q, &who, req)
                .await?;
        self.console.say(&format!(
            "{name} approved ({} approvals; the policy needs {}).",
            after.approvers.len(),
            after.approvals_needed
        ));
        let mut d = BTreeMap::new();
        d.insert("request".to_owned(), req.id.clone());
        d.insert("digest".to_owned(), req.digest.clone());
        self.record("approve", Some(name), StepOutcome::Done, d)
            .await?;
        Ok(after)
    }

    async fn component(&mut self, role: &str, person: Option<u32>) -> Result<(), Abort> {
        let alg = self.algorithm()?;
        let method = KcvMethod::preferred(alg.family())
            .ok_or_else(|| no(format!("{alg} keys are not entered as components")))?;
        let names = self.names(role)?;
        let slots: Vec<usize> = match person {
            Some(p) => vec![p as usize - 1],
            None => (0..names.len()).collect(),
        };
        for slot in slots {
            let name = names
                .get(slot)
                .ok_or_else(|| no(format!("no person {} in role {role}", slot + 1)))?
                .clone();
            self.active(role, slot, &name).await?;
            if self.components.len() >= 3 {
                return Err(no("a key is entered as 2 or 3 components"));
            }
            let mut q = self.question(role, slot, Some(&name), Field::Component);
            q.prompt = format!("{name}: type your component (hex, hidden): ");
            let typed: Zeroizing<String> = self.console.ask_secret(&q)?;
            let component = Component::parse_hex(typed.trim(), alg)?;
            drop(typed);
            let mut q = self.question(role, slot, Some(&name), Field::ComponentKcv);
            q.prompt = format!("{name}: the check value on your component form (blank if none): ");
            let form = self.console.ask(&q)?;
            let form = match form.trim() {
                "" => None,
                k => Some(Kcv::parse_hex(k).map_err(|e| no(format!("check value: {e}")))?),
            };
            // Read aloud in the method of the form, so that the value the
            // custodian hears is the value printed in front of them.
            let method = form
                .as_ref()
                .and_then(|f| same_method(alg, f, |m| component.kcv(m).ok()))
                .unwrap_or(method);
            let kcv = component
                .kcv(method)
                .map_err(|e| no(format!("check value: {e}")))?;
            self.console.say(&format!(
                "{name}'s component has check value {kcv} ({method}). Read it aloud."
            ));
            if let Some(f) = &form {
                verify_component_kcv(&component, alg, f)
                    .map_err(|e| no(format!("{name}'s component: {e}")))?;
                self.console
                    .say(&format!("It matches the form's check value {f}."));
            }
            self.confirm(
                role,
                slot,
                Some(&name),
                format!("{name}: is {kcv} the check value on your form?"),
            )
            .await?;
            let mut d = BTreeMap::new();
            d.insert(
                "component".to_owned(),
                (self.components.len() + 1).to_string(),
            );
            d.insert("component_kcv".to_owned(), kcv.to_string());
            d.insert("kcv_method".to_owned(), method.as_str().to_owned());
            if let Some(f) = &form {
                d.insert("form_kcv".to_owned(), f.to_string());
            }
            self.record("component", Some(&name), StepOutcome::Done, d)
                .await?;
            self.components.push(component);
            self.component_kcvs.push(Some(form.unwrap_or(kcv)));
        }
        Ok(())
    }

    /// Split knowledge: each component came from a different custodian,
    /// at least two of them.
    fn check_split_knowledge(&self) -> Result<(), Abort> {
        let entered_by: Vec<&String> = self
            .steps
            .iter()
            .filter(|s| s.kind == "component")
            .filter_map(|s| s.actor.as_ref())
            .collect();
        let distinct: std::collections::BTreeSet<&&String> = entered_by.iter().collect();
        if distinct.len() < 2 || distinct.len() != entered_by.len() {
            return Err(no(
                "split knowledge: each component is entered by a different custodian, at least 2",
            ));
        }
        Ok(())
    }

    fn take_components(&mut self) -> Vec<(Component, Option<Kcv>)> {
        let kcvs = std::mem::take(&mut self.component_kcvs);
        std::mem::take(&mut self.components)
            .into_iter()
            .zip(kcvs)
            .collect()
    }

    /// The check value of the components combined, in host memory where
    /// they are anyway; the key itself is dropped (zeroized) at once.
    fn combined_kcv(&self, alg: Algorithm, expected: &Kcv) -> Result<(Kcv, bool), Abort> {
        let method = KcvMethod::preferred(alg.family())
            .ok_or_else(|| no(format!("{alg} keys are not entered as components")))?;
        let key = combine(&self.components, alg)?;
        // Shown in the sender's method, so both lines can be compared.
        let method = same_method(alg, expected, |m| key.kcv(m).ok()).unwrap_or(method);
        let kcv = key
            .kcv(method)
            .map_err(|e| no(format!("check value: {e}")))?;
        let matches = verify_key_kcv(&key, alg, expected).is_ok();
        Ok((kcv, matches))
    }

    async fn confirm_kcv(&mut self) -> Result<(), Abort> {
        if let Some(issued) = self.issued.clone() {
            return self.confirm_generated_kcv(&issued).await;
        }
        let alg = self.algorithm()?;
        let expected =
            Kcv::parse_hex(self.param("kcv")?).map_err(|e| no(format!("parameter kcv: {e}")))?;
        let (kcv, matches) = self.combined_kcv(alg, &expected)?;
        self.console.say(&format!(
            "Combined key check value: {kcv}\nSender's check value:     {expected}"
        ));
        if !matches {
            return Err(no(format!(
                "the combined check value {kcv} differs from the sender's {expected}"
            )));
        }
        self.confirm(
            "room",
            0,
            None,
            format!("Do all present read {kcv} on the sender's form?"),
        )
        .await?;
        let mut d = BTreeMap::new();
        d.insert("kcv".to_owned(), kcv.to_string());
        d.insert("expected_kcv".to_owned(), expected.to_string());
        self.record("confirm-kcv", None, StepOutcome::Done, d).await
    }

    async fn execute(&mut self, role: &str) -> Result<(), Abort> {
        let req = self
            .request
            .clone()
            .ok_or_else(|| no("there is no request to execute"))?;
        let names = self.names(role)?;
        let name = names
            .first()
            .ok_or_else(|| no("nobody to execute"))?
            .clone();
        let who = self.active(role, 0, &name).await?;
        if req.operation.needs_components() {
            self.check_split_knowledge()?;
        }
        if req.operation.hands_out_components() {
            return self.execute_generation(role, &name, &who, &req).await;
        }
        let components = self.take_components();
        let result = if req.operation.needs_security_officer() {
            self.console
                .say("Switching to the security officer's login of the token.");
            self.kms.security_officer().await?;
            let r = self
                .kms
                .svc()?
                .execute_with(&who, &req.id, components)
                .await;
            // Back to the user's login whatever happened (the transcript is
            // signed there, and the SO's records get countersigned).
            self.kms.user().await?;
            r
        } else if components.is_empty() {
            self.kms.svc()?.execute(&who, &req.id).await
        } else {
            self.kms
                .svc()?
                .execute_with(&who, &req.id, components)
                .await
        };
        let executed = result?;
        self.executed = true;
        let mut d = BTreeMap::new();
        d.insert("request".to_owned(), req.id.clone());
        d.insert("digest".to_owned(), req.digest.clone());
        match &executed {
            Executed::Key(k) => {
                let v = k.current();
                let kcv = v.and_then(|v| v.kcv.clone()).unwrap_or_default();
                self.console.say(&format!(
                    "Done: {}/{} version {} ({}), check value {kcv}.",
                    k.tenant,
                    k.name,
                    v.map(|v| v.version).unwrap_or(0),
                    v.map(|v| v.state.to_string()).unwrap_or_default()
                ));
                d.insert("key".to_owned(), format!("{}/{}", k.tenant, k.name));
                d.insert("kcv".to_owned(), kcv);
            }
            Executed::Exported(e) => {
                self.console.say(&format!(
                    "Done: {}/{} v{} (check value {}) wrapped under {} v{} ({:?}):\n{}",
                    e.tenant,
                    e.name,
                    e.version,
                    e.kcv.as_deref().unwrap_or("-"),
                    e.kek,
                    e.kek_version,
                    e.wrap_algorithm,
                    e.wrapped
                ));
                d.insert("key".to_owned(), format!("{}/{}", e.tenant, e.name));
                d.insert("kcv".to_owned(), e.kcv.clone().unwrap_or_default());
                d.insert("kek".to_owned(), e.kek.to_string());
            }
            _ => {
                self.console.say("Done.");
            }
        }
        self.record("execute", Some(&name), StepOutcome::Done, d)
            .await
    }

    /// Execute an `export-components` request: the key is generated and
    /// imported in the token; its components wait, in zeroizing buffers,
    /// for the `components-out` step. Only check values are shown here.
    async fn execute_generation(
        &mut self,
        role: &str,
        name: &str,
        who: &CustodianSession,
        req: &ApprovalRequest,
    ) -> Result<(), Abort> {
        self.confirm(
            role,
            0,
            Some(name),
            format!(
                "{name}: generate {} as components now (request {})?",
                match &req.operation {
                    Operation::ExportComponents { tenant, key, .. } => format!("{tenant}/{key}"),
                    _ => "the key".to_owned(),
                },
                req.id
            ),
        )
        .await?;
        let generated = self.kms.svc()?.execute_components(who, &req.id).await?;
        self.executed = true;
        let issued = generated.issued();
        self.generated = Some(generated);
        let token_kcv = issued
            .key
            .current()
            .and_then(|v| v.kcv.clone())
            .unwrap_or_default();
        self.console.say(&format!(
            "Done: {}/{} generated in the token as {} components (check value {} {}, token {token_kcv}).
Each holder receives their component next, alone at the screen: {}.",
            issued.key.tenant,
            issued.key.name,
            issued.components.len(),
            issued.kcv_method,
            issued.kcv,
            issued
                .components
                .iter()
                .map(|c| c.custodian.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut d = BTreeMap::new();
        d.insert("request".to_owned(), req.id.clone());
        d.insert("digest".to_owned(), req.digest.clone());
        d.insert(
            "key".to_owned(),
            format!("{}/{}", issued.key.tenant, issued.key.name),
        );
        d.insert("kcv".to_owned(), issued.kcv.clone());
        d.insert("kcv_method".to_owned(), issued.kcv_method.clone());
        d.insert("token_kcv".to_owned(), token_kcv);
        d.insert(
            "holders".to_owned(),
            issued
                .components
                .iter()
                .map(|c| c.custodian.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        self.issued = Some(issued);
        self.record("execute", Some(name), StepOutcome::Done, d)
            .await
    }

    /// Each holder, in the request's order, alone at the screen, receives
    /// their own component once and confirms its check value. Each
    /// component is dropped (zeroized) as soon as it was handed over.
    async fn components_out(&mut self, role: &str) -> Result<(), Abort> {
        let generated = self
            .generated
            .take()
            .ok_or_else(|| no("no key was generated as components in this run"))?;
        let names = self.names(role)?;
        let method = self
            .issued
            .as_ref()
            .map(|i| i.kcv_method.clone())
            .unwrap_or_default();
        let mut parts = generated.components.into_iter();
        for (slot, name) in names.iter().enumerate() {
            let part = parts
                .next()
                .ok_or_else(|| no(format!("no component for {name}")))?;
            if part.custodian.as_str() != name {
                return Err(no(format!(
                    "the component in place {} is {}'s, not {name}'s",
                    slot + 1,
                    part.custodian
                )));
            }
            self.active(role, slot, name).await?;
            let kcv = part.kcv.to_string();
            let text = part.component.reveal_hex();
            drop(part);
            let mut d = BTreeMap::new();
            d.insert("component".to_owned(), (slot + 1).to_string());
            d.insert("component_kcv".to_owned(), kcv.clone());
            d.insert("kcv_method".to_owned(), method.clone());
            self.hand_over_once(
                Recipient { role, slot, name },
                Field::Component,
                format!(
                    "Component {} of {} for {name} (check value {kcv}, {method}): nobody else looks.",
                    slot + 1,
                    names.len()
                ),
                text,
                format!("{name}: did you write down your component and its check value {kcv}?"),
                ("component-received", d),
            )
            .await?;
        }
        if parts.next().is_some() {
            return Err(no("more components than holders present"));
        }
        Ok(())
    }

    /// The whole generated key's check value, for the partner's form.
    async fn confirm_generated_kcv(&mut self, issued: &ComponentsIssued) -> Result<(), Abort> {
        self.console.say(&format!(
            "Whole key check value ({}): {}
It goes to the partner separately from the components.",
            issued.kcv_method, issued.kcv
        ));
        self.confirm(
            "room",
            0,
            None,
            format!(
                "Do all present read {} on the partner's check value form?",
                issued.kcv
            ),
        )
        .await?;
        let mut d = BTreeMap::new();
        d.insert("kcv".to_owned(), issued.kcv.clone());
        d.insert("kcv_method".to_owned(), issued.kcv_method.clone());
        d.insert(
            "key".to_owned(),
            format!("{}/{}", issued.key.tenant, issued.key.name),
        );
        self.record("confirm-kcv", None, StepOutcome::Done, d).await
    }

    fn read_backup_file(&self) -> Result<(std::path::PathBuf, BackupFile), Abort> {
        let path = std::path::PathBuf::from(self.param("file")?);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| no(format!("reading {}: {e}", path.display())))?;
        Ok((path, BackupFile::from_json(&text)?))
    }

    /// M custodians' shares of the backup KEK, presented hidden; the KEK
    /// re-imported trusted under the security officer's login and its check
    /// value confirmed against the backup file's.
    async fn kek_recover(&mut self, role: &str, by: &str) -> Result<(), Abort> {
        let kek = kms::model::KeyName::parse(self.param("kek")?).map_err(ServiceError::from)?;
        let (path, file) = self.read_backup_file()?;
        if file.kek.name != kek.as_str() {
            return Err(no(format!(
                "{} was made under {}/{}, not kms/{kek}",
                path.display(),
                file.kek.tenant,
                file.kek.name
            )));
        }
        self.console.say(&format!(
            "Backup file {} (digest {}): {} key versions wrapped under kms/{kek} v{}, check value {}.",
            path.display(),
            file.digest,
            file.entries.len(),
            file.kek.version,
            file.kek.kcv
        ));
        let names = self.names(role)?;
        let officer = self
            .names(by)?
            .first()
            .cloned()
            .ok_or_else(|| no(format!("nobody of role {by}")))?;
        let mut shares = Vec::with_capacity(names.len());
        for (slot, name) in names.iter().enumerate() {
            self.active(role, slot, name).await?;
            let mut q = self.question(role, slot, Some(name), Field::Share);
            q.prompt = format!("{name}: type your share of the backup KEK kms/{kek} (hidden): ");
            let text = self.console.ask_secret(&q)?;
            let share =
                Share::parse(text.trim()).map_err(|e| no(format!("{name}'s share: {e}")))?;
            drop(text);
            self.console
                .say(&format!("Share {} of {name} taken.", share.index()));
            let mut d = BTreeMap::new();
            d.insert("share_index".to_owned(), share.index().to_string());
            d.insert("share_check".to_owned(), share.check_value().to_string());
            self.record("kek-share", Some(name), StepOutcome::Done, d)
                .await?;
            shares.push(share);
        }
        let who = self.active(by, 0, &officer).await?;
        if self.kms.role() != Some(kms::hsm::Role::SecurityOfficer) {
            self.console
                .say("Switching to the security officer's login of the token.");
            self.kms.security_officer().await?;
        }
        let rec = self
            .kms
            .svc()?
            .recover_backup_kek(&who.actor(), &kek, shares, Some(&file.kek.kcv))
            .await?;
        let kcv = rec
            .current()
            .and_then(|v| v.kcv.clone())
            .unwrap_or_default();
        self.backup_file = Some(file.clone());
        self.console.say(&format!(
            "Backup KEK kms/{kek} is on this token again (trusted).
  Token check value:       {kcv}
  Backup file's KEK value: {}",
            file.kek.kcv
        ));
        if !kcv.eq_ignore_ascii_case(&file.kek.kcv) {
            return Err(no(format!(
                "the recovered KEK's check value {kcv} differs from the backup file's {}",
                file.kek.kcv
            )));
        }
        self.confirm(
            "room",
            0,
            None,
            format!("Do all present read {kcv} on the backup record?"),
        )
        .await?;
        let mut d = BTreeMap::new();
        d.insert("kek".to_owned(), kek.to_string());
        d.insert("kcv".to_owned(), kcv);
        d.insert("expected_kcv".to_owned(), file.kek.kcv.clone());
        d.insert("shares".to_owned(), names.len().to_string());
        d.insert("backup_digest".to_owned(), file.digest.clone());
        self.record("kek-recover", Some(&officer), StepOutcome::Done, d)
            .await
    }

    /// The backup file restored under the user's login; each key version's
    /// check value listed (each was reproduced by the token, or nothing was
    /// restored) and confirmed.
    async fn restore(&mut self, role: &str) -> Result<(), Abort> {
        let file = match self.backup_file.clone() {
            Some(f) => f,
            None => self.read_backup_file()?.1,
        };
        let names = self.names(role)?;
        let name = names
            .first()
            .ok_or_else(|| no("nobody to restore"))?
            .clone();
        let who = self.active(role, 0, &name).await?;
        if self.kms.role() != Some(kms::hsm::Role::User) {
            self.console.say(
                "Switching to the user's login; the KMS's own keys lost with the old token are put back first.",
            );
            self.kms.user_on_new_token(&who.actor(), &file).await?;
        }
        let report = self.kms.svc()?.restore(&who.actor(), &file).await?;
        let line = |m: &kms::audit::KeyMention| {
            format!(
                "{}/{} v{} check value {}",
                m.tenant,
                m.name,
                m.version.unwrap_or(0),
                m.kcv.as_deref().unwrap_or("-")
            )
        };
        let mut text = format!("Backup {} restored:", file.digest);
        for (what, list) in [
            ("restored", &report.restored),
            ("already on the token", &report.present),
            (
                "destroyed since the backup, not restored",
                &report.destroyed_since,
            ),
        ] {
            for m in list {
                text.push_str(&format!(
                    "
  {what:<12} {}",
                    line(m)
                ));
            }
        }
        self.console.say(&text);
        self.confirm(
            "room",
            0,
            None,
            "Do these check values match the keys' records?".to_owned(),
        )
        .await?;
        let mut d = BTreeMap::new();
        d.insert("backup_digest".to_owned(), file.digest.clone());
        d.insert("restored".to_owned(), report.restored.len().to_string());
        d.insert("present".to_owned(), report.present.len().to_string());
        d.insert(
            "destroyed_since".to_owned(),
            report.destroyed_since.len().to_string(),
        );
        d.insert(
            "kcvs".to_owned(),
            report
                .restored
                .iter()
                .chain(&report.present)
                .map(|m| {
                    format!(
                        "{}/{}/{}={}",
                        m.tenant,
                        m.name,
                        m.version.unwrap_or(0),
                        m.kcv.as_deref().unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
        );
        self.record("restore", Some(&name), StepOutcome::Done, d)
            .await
    }

    async fn close_founding(&mut self, role: &str) -> Result<(), Abort> {
        let names = self.names(role)?;
        let name = names
            .first()
            .ok_or_else(|| no("nobody to close the founding"))?
            .clone();
        let who = self.active(role, 0, &name).await?;
        self.confirm(
            role,
            0,
            Some(&name),
            format!(
                "{name}: close the founding for good (every later enrolment is dual controlled)?"
            ),
        )
        .await?;
        let people = self.kms.svc()?.close_founding(&who).await?;
        self.console.say(&format!(
            "The founding is closed; {} people enrolled: {}.",
            people.len(),
            people
                .iter()
                .map(|p| format!("{} ({})", p.name, p.role))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut d = BTreeMap::new();
        d.insert("enrolled".to_owned(), people.len().to_string());
        self.record("close-founding", Some(&name), StepOutcome::Done, d)
            .await
    }

    /// Each person of `role` presents their share, hidden. A sealed KMS
    /// takes each one (recorded, accepted or refused) and opens with M.
    async fn shares_in(&mut self, role: &str) -> Result<(), Abort> {
        let count = match self.script.roles.get(role) {
            Some(spec) => spec.count,
            None if role == UNSEAL_ROLE => u32::from(self.kms.seal_threshold().unwrap_or(0)),
            None => return Err(no(format!("role {role} is not declared"))),
        };
        let known = self.roles.get(role).cloned();
        let mut names = Vec::new();
        for slot in 0..count as usize {
            let name = match known.as_ref().and_then(|k| k.get(slot)) {
                Some(n) => {
                    self.active(role, slot, n).await?;
                    n.clone()
                }
                None => {
                    let mut q = self.question(role, slot, None, Field::Name);
                    q.prompt = format!("{role} {} of {count}: your name: ", slot + 1);
                    let name = self.console.ask(&q)?;
                    kms::model::CustodianName::parse(&name).map_err(ServiceError::from)?;
                    if names.contains(&name) {
                        return Err(no(format!("{name} presented a share already")));
                    }
                    name
                }
            };
            let mut q = self.question(role, slot, Some(&name), Field::Share);
            q.prompt = format!("{name}: type your share (hidden): ");
            let text = self.console.ask_secret(&q)?;
            let share =
                Share::parse(text.trim()).map_err(|e| no(format!("{name}'s share: {e}")))?;
            let mut d = BTreeMap::new();
            d.insert("share_index".to_owned(), share.index().to_string());
            d.insert("share_check".to_owned(), share.check_value().to_string());
            d.insert("split".to_owned(), share.split_id().to_string());
            if self.kms.is_sealed() {
                let progress = self.kms.present_share(text.trim(), &name).await?;
                self.console.say(&format!(
                    "Share {} of {name} accepted: {} of {} in.",
                    share.index(),
                    progress.have,
                    progress.need
                ));
                d.insert("have".to_owned(), progress.have.to_string());
            } else {
                self.console
                    .say(&format!("Share {} of {name} taken.", share.index()));
            }
            drop(text);
            self.shares.push(share);
            self.record("shares-in", Some(&name), StepOutcome::Done, d)
                .await?;
            names.push(name);
        }
        if self.kms.is_sealed() {
            self.kms.unseal(&self.shares).await?;
            self.console.say("The KMS is unsealed.");
            for step in std::mem::take(&mut self.unrecorded) {
                self.kms
                    .svc()?
                    .record_ceremony_step(&self.script.name, &self.run_id, &step)
                    .await?;
            }
            self.record("unsealed", None, StepOutcome::Done, BTreeMap::new())
                .await?;
        }
        if known.is_none() {
            self.roles.insert(role.to_owned(), names);
        }
        Ok(())
    }

    /// Seal, rotate or re-key, and hand each person of `role` their share,
    /// shown once.
    async fn shares_out(&mut self, role: &str, by: &str, act: SealAct) -> Result<(), Abort> {
        let m: u8 = self
            .param("m")?
            .parse()
            .map_err(|_| no("parameter m is a number of shares"))?;
        let names = self.names(role)?;
        let n = u8::try_from(names.len()).map_err(|_| no("too many custodians"))?;
        let officer = self
            .names(by)?
            .first()
            .cloned()
            .ok_or_else(|| no(format!("nobody of role {by}")))?;
        let who = self.active(by, 0, &officer).await?;
        self.confirm(
            by,
            0,
            Some(&officer),
            format!(
                "{officer}: {} the seal: {m} of {n} shares, one each for {}?",
                match act {
                    SealAct::Initialize => "initialize",
                    SealAct::Rotate => "re-split",
                    SealAct::Rekey => "re-key",
                },
                names.join(", ")
            ),
        )
        .await?;
        let svc = self.kms.svc()?;
        let shares = match act {
            SealAct::Initialize => svc.initialize_seal(&who.actor(), m, n).await?,
            SealAct::Rotate => svc.rotate_shares(&who.actor(), &self.shares, m, n).await?,
            SealAct::Rekey => svc.rekey_seal(&who.actor(), &self.shares, m, n).await?,
        };
        self.shares.clear();
        if act != SealAct::Rotate {
            // The token PIN changed: later logins of this run need the new one.
            let secret = kms::crypto::shares::combine(&shares[..usize::from(m)])
                .map_err(|e| no(format!("the new shares: {e}")))?;
            self.kms.set_user_pin(kms::seal::token_pin(&secret));
        }
        let mut d = BTreeMap::new();
        d.insert("threshold".to_owned(), m.to_string());
        d.insert("shares".to_owned(), n.to_string());
        if let Some(first) = shares.first() {
            d.insert("split".to_owned(), first.split_id().to_string());
        }
        self.record("shares-out", Some(&officer), StepOutcome::Done, d)
            .await?;
        self.hand_out(role, &names, shares).await
    }

    /// Each person of `role` receives their own share, shown once, and
    /// confirms its check value.
    async fn hand_out(
        &mut self,
        role: &str,
        names: &[String],
        shares: Vec<Share>,
    ) -> Result<(), Abort> {
        for (slot, (name, share)) in names.iter().zip(shares).enumerate() {
            self.active(role, slot, name).await?;
            let check = share.check_value().to_string();
            let prompt = format!(
                "Share {} for {name} (check value {check}): keep it apart from every other share.",
                share.index()
            );
            let text = share.to_text();
            drop(share);
            let mut d = BTreeMap::new();
            d.insert("share_check".to_owned(), check.clone());
            self.hand_over_once(
                Recipient { role, slot, name },
                Field::Share,
                prompt,
                text,
                format!("{name}: did you write down share check value {check}?"),
                ("share-received", d),
            )
            .await?;
        }
        Ok(())
    }

    /// Show one secret (a share, a generated component) to its one
    /// recipient, once, then have them confirm its check value and record
    /// the step (check values only). The text is wiped as soon as shown.
    async fn hand_over_once(
        &mut self,
        to: Recipient<'_>,
        field: Field,
        prompt: String,
        text: Zeroizing<String>,
        confirm: String,
        (step, details): (&str, BTreeMap<String, String>),
    ) -> Result<(), Abort> {
        let mut q = self.question(to.role, to.slot, Some(to.name), field);
        q.prompt = prompt;
        self.console.hand_over(&q, &text)?;
        drop(text);
        self.confirm(to.role, to.slot, Some(to.name), confirm)
            .await?;
        self.record(step, Some(to.name), StepOutcome::Done, details)
            .await
    }

    async fn backup(&mut self, role: &str) -> Result<(), Abort> {
        let names = self.names(role)?;
        let name = names
            .first()
            .ok_or_else(|| no("nobody to back up"))?
            .clone();
        let who = self.active(role, 0, &name).await?;
        let kek = kms::model::KeyName::parse(self.param("kek")?).map_err(ServiceError::from)?;
        let path = std::path::PathBuf::from(self.param("file")?);
        let file = self.kms.svc()?.backup(&who.actor(), &kek).await?;
        let json = file.to_json()?;
        std::fs::write(&path, json + "\n")
            .map_err(|e| no(format!("writing {}: {e}", path.display())))?;
        self.console.say(&format!(
            "Backup written to {} (digest {}); keys travel only wrapped under {kek}.",
            path.display(),
            file.digest
        ));
        let mut d = BTreeMap::new();
        d.insert("kek".to_owned(), kek.to_string());
        d.insert("digest".to_owned(), file.digest.clone());
        d.insert("file".to_owned(), path.display().to_string());
        self.record("backup", Some(&name), StepOutcome::Done, d)
            .await
    }

    /// The backup KEK under dual control (invariant 3): the officer
    /// requests it, every approver other than the officer signs an
    /// approval of exactly that request, and the officer executes it under
    /// the SO login; its value is split into one share per custodian.
    async fn backup_kek(&mut self, role: &str, by: &str, approvers: &str) -> Result<(), Abort> {
        let m: u8 = self
            .param("m")?
            .parse()
            .map_err(|_| no("parameter m is a number of shares"))?;
        let kek = kms::model::KeyName::parse(self.param("kek")?).map_err(ServiceError::from)?;
        let names = self.names(role)?;
        let n = u8::try_from(names.len()).map_err(|_| no("too many custodians"))?;
        let officer = self
            .names(by)?
            .first()
            .cloned()
            .ok_or_else(|| no(format!("nobody of role {by}")))?;
        // Dual control at the table: the officer alone cannot make it.
        let agreeing = self.names(approvers)?;
        if agreeing.iter().all(|a| *a == officer) {
            return Err(no(
                "a backup KEK needs the agreement of someone besides the officer",
            ));
        }
        let who = self.active(by, 0, &officer).await?;
        let op = Operation::BackupKek {
            name: kek.to_string(),
            threshold: m,
            shares: n,
        };
        let mut req = self.kms.svc()?.request(&who, op).await?;
        self.console.say(&format!(
            "{officer} requested:\n  request   {}\n  operation {}\n  digest    {}\nApprovers: compare the digest on your own screen.",
            req.id,
            req.operation.canonical()?,
            req.digest
        ));
        let mut d = BTreeMap::new();
        d.insert("request".to_owned(), req.id.clone());
        d.insert("digest".to_owned(), req.digest.clone());
        d.insert("operation".to_owned(), "trust".to_owned());
        self.record("request", Some(&officer), StepOutcome::Done, d)
            .await?;
        self.request = Some(req.clone());
        for (slot, a) in agreeing.iter().enumerate() {
            if *a == officer {
                continue;
            }
            req = self.approve_as(approvers, slot, a, &req).await?;
            self.request = Some(req.clone());
        }
        let who = self.active(by, 0, &officer).await?;
        self.console
            .say("Switching to the security officer's login of the token.");
        self.kms.security_officer().await?;
        let made = self.kms.svc()?.execute_backup_kek(&who, &req.id).await;
        // Back to the user's login whatever happened (the transcript is
        // signed there, and the SO's records get countersigned).
        self.kms.user().await?;
        let made = made?;
        self.executed = true;
        self.console.say(&format!(
            "Backup KEK {kek} created (check value {}); {m} of {n} shares rebuild it.",
            made.kcv
        ));
        let mut d = BTreeMap::new();
        d.insert("kek".to_owned(), kek.to_string());
        d.insert("kcv".to_owned(), made.kcv.clone());
        d.insert("threshold".to_owned(), m.to_string());
        d.insert("shares".to_owned(), n.to_string());
        d.insert("agreed".to_owned(), agreeing.join(","));
        d.insert("request".to_owned(), req.id.clone());
        self.record("backup-kek", Some(&officer), StepOutcome::Done, d)
            .await?;
        self.hand_out(role, &names, made.shares).await
    }

    /// The transcript, signed and recorded under the user's login.
    async fn finish(
        mut self,
        started_at: String,
        abort_reason: Option<String>,
    ) -> Result<SignedTranscript, RunError> {
        // Nothing typed or generated outlives the run.
        self.components.clear();
        self.component_kcvs.clear();
        self.shares.clear();
        let undelivered = self.generated.take().map(|g| g.components.len());
        if self.kms.is_sealed() {
            // No token login: the presentations are in the trail (the
            // unsealer records each), but nothing can sign a transcript.
            return Err(RunError::Service(ServiceError::Refused(format!(
                "the ceremony stopped while the KMS was still sealed ({}); each share presented is recorded in the audit trail",
                abort_reason.as_deref().unwrap_or("not unsealed")
            ))));
        }
        if self.kms.role() != Some(kms::hsm::Role::User) {
            match &self.backup_file {
                // A replacement token: the user's login opens only once the
                // KMS's own keys are back.
                Some(file) => {
                    let who = self
                        .people
                        .first()
                        .map(|p| Actor::parse(&p.name))
                        .transpose()?
                        .unwrap_or(Actor::parse("ceremony")?);
                    self.kms.user_on_new_token(&who, file).await?
                }
                None => self.kms.user().await?,
            }
        }
        let mut abort_reason = abort_reason;
        if let (Some(reason), Some(n)) = (&mut abort_reason, undelivered) {
            reason.push_str(&format!(
                "; {n} generated components were never handed out and are gone: destroy the key, it cannot reach the partner"
            ));
        }
        if let (Some(reason), Some(req)) = (&mut abort_reason, &self.request) {
            if !self.executed {
                reason.push_str(&format!(
                    "; request {} was left unexecuted (it expires at {})",
                    req.id,
                    rfc3339(req.expires_at)
                ));
            }
        }
        let outcome = if abort_reason.is_some() {
            StepOutcome::Aborted
        } else {
            StepOutcome::Done
        };
        let transcript = Transcript {
            format: TRANSCRIPT_FORMAT.into(),
            ceremony: self.script.name.clone(),
            title: self.script.title.clone(),
            run_id: self.run_id.clone(),
            requirements: self.script.requirements.clone(),
            parameters: self.params.clone(),
            started_at,
            ended_at: rfc3339(now()),
            people: self.people.clone(),
            steps: self.steps.clone(),
            outcome,
            abort_reason,
        };
        let recorder = self
            .people
            .first()
            .map(|p| Actor::parse(&p.name))
            .transpose()?
            .unwrap_or(Actor::parse("ceremony")?);
        let signed = self
            .kms
            .svc()?
            .record_transcript(&recorder, transcript)
            .await?;
        self.console.say(&format!(
            "\n=== Ceremony {} {} ===\nTranscript digest {}\nSigned by the KMS; recorded in the audit trail.",
            self.script.name,
            if outcome == StepOutcome::Done {
                "completed"
            } else {
                "ABORTED"
            },
            signed.digest
        ));
        Ok(signed)
    }
}

/// The check-value method in which `value` is written (3 bytes: the token's
/// zero-block method; 5 bytes: AES-CMAC, X9.24-1:2017; GlobalPlatform's),
/// found by computing each method of the key's family.
fn same_method(
    alg: Algorithm,
    value: &Kcv,
    compute: impl Fn(KcvMethod) -> Option<Kcv>,
) -> Option<KcvMethod> {
    let methods: &[KcvMethod] = match alg.family() {
        kms::model::KeyFamily::Aes => &[KcvMethod::AesEcb, KcvMethod::AesCmac, KcvMethod::AesGp],
        kms::model::KeyFamily::Tdes => &[KcvMethod::Tdes],
        _ => &[],
    };
    methods
        .iter()
        .copied()
        .find(|m| compute(*m).is_some_and(|k| k == *value))
}

/// Who receives a secret in a hand-over: a person in their script role.
struct Recipient<'a> {
    role: &'a str,
    slot: usize,
    name: &'a str,
}
