//! Where the people in the room see and type. Two implementations: the
//! terminal (hidden input for PINs, components and shares; nothing secret
//! echoed; check values printed for reading aloud and confirmed y/n), and
//! an answers file for automation and tests (`--answers`, see
//! [`Answers`]), whose secrets come only from files or environment
//! variables, never from the answers file itself.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("reading the terminal: {0}")]
    Io(String),
    #[error("the input ended")]
    Eof,
    /// The answers file has no answer for a question.
    #[error("answers file: {0}")]
    Unanswered(String),
    #[error("answers file {path}: {why}")]
    Answers { path: PathBuf, why: String },
}

/// What is being asked, so an answers file can tell the questions apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The name of the `slot`-th person of a role.
    Name,
    Pin,
    NewPin,
    NewPinAgain,
    Component,
    /// The check value printed on a component form (public).
    ComponentKcv,
    /// The file of the approver's signing key (PEM).
    ApprovalKey,
    /// The file of the approver's certificate (DER or PEM).
    ApprovalCert,
    Share,
    Confirm,
}

/// One question.
#[derive(Debug, Clone)]
pub struct Question {
    /// 1-based step number.
    pub step: usize,
    /// The script's role of the person asked.
    pub role: String,
    /// Which person of the role, from 0.
    pub slot: usize,
    /// Their name, once known.
    pub person: Option<String>,
    pub field: Field,
    pub prompt: String,
}

pub trait Console {
    /// Show public text.
    fn say(&mut self, text: &str);
    /// Visible input (names, file paths, check values).
    fn ask(&mut self, q: &Question) -> Result<String, ConsoleError>;
    /// Hidden input: never echoed, held only in a zeroizing buffer.
    fn ask_secret(&mut self, q: &Question) -> Result<Zeroizing<String>, ConsoleError>;
    /// A yes/no question; anything but yes is no.
    fn confirm(&mut self, q: &Question) -> Result<bool, ConsoleError>;
    /// Give one person a secret meant only for them (a share, or a
    /// generated component when `q.field` is `Component`): shown once,
    /// then gone from the screen.
    fn hand_over(&mut self, q: &Question, secret: &Zeroizing<String>) -> Result<(), ConsoleError>;
}

/// The terminal: stdout for what everyone may see, hidden input through
/// the controlling terminal (rpassword).
pub struct TerminalConsole {
    input: std::io::StdinLock<'static>,
}

impl Default for TerminalConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalConsole {
    pub fn new() -> TerminalConsole {
        TerminalConsole {
            input: std::io::stdin().lock(),
        }
    }

    fn line(&mut self, prompt: &str) -> Result<String, ConsoleError> {
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let mut s = String::new();
        let n = self
            .input
            .read_line(&mut s)
            .map_err(|e| ConsoleError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ConsoleError::Eof);
        }
        Ok(s.trim().to_owned())
    }
}

/// Clear the screen and the scroll-back.
const CLEAR: &str = "\x1b[H\x1b[2J\x1b[3J";

impl Console for TerminalConsole {
    fn say(&mut self, text: &str) {
        println!("{text}");
    }

    fn ask(&mut self, q: &Question) -> Result<String, ConsoleError> {
        self.line(&q.prompt)
    }

    fn ask_secret(&mut self, q: &Question) -> Result<Zeroizing<String>, ConsoleError> {
        let typed = rpassword::prompt_password(&q.prompt).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ConsoleError::Eof,
            _ => ConsoleError::Io(e.to_string()),
        })?;
        Ok(Zeroizing::new(typed))
    }

    fn confirm(&mut self, q: &Question) -> Result<bool, ConsoleError> {
        let a = self.line(&format!("{} [y/n] ", q.prompt))?;
        Ok(matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
    }

    fn hand_over(&mut self, q: &Question, secret: &Zeroizing<String>) -> Result<(), ConsoleError> {
        let who = q.person.as_deref().unwrap_or("the custodian");
        self.line(&format!(
            "{}\nOnly {who} looks at the screen now. Press Enter to show it.",
            q.prompt
        ))?;
        print!("\n    {}\n\n", secret.as_str());
        let _ = std::io::stdout().flush();
        let shown = self.line("Write it down, then press Enter to clear the screen.");
        print!("{CLEAR}");
        let _ = std::io::stdout().flush();
        shown.map(|_| ())
    }
}

/// A secret's source in an answers file: `env:NAME` or `file:PATH` (the
/// file's content, trailing newline removed).
fn read_secret(source: &str, base: &Path) -> Result<Zeroizing<String>, String> {
    if let Some(var) = source.strip_prefix("env:") {
        let v = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        return Ok(Zeroizing::new(v));
    }
    if let Some(p) = source.strip_prefix("file:") {
        let path = resolve(base, p);
        let raw = Zeroizing::new(
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        return Ok(Zeroizing::new(
            raw.trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    Err("a secret is given as env:NAME or file:PATH, never in the answers file".into())
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// What one person answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonAnswers {
    /// env:NAME or file:PATH.
    pub pin: Option<String>,
    /// The PIN that replaces an initial PIN (env:/file:).
    pub new_pin: Option<String>,
    /// Their component, hex (env:/file:).
    pub component: Option<String>,
    /// The check value on their component form (public; may be inline).
    pub component_kcv: Option<String>,
    /// Their approval signing key (PEM) and certificate: file paths.
    pub approval_key: Option<String>,
    pub approval_cert: Option<String>,
    /// Their unseal share (env:/file:).
    pub share: Option<String>,
    /// Where a share handed to them is written (a file path; created 0600).
    pub share_out: Option<String>,
    /// Where a component generated for them is written (a file path;
    /// created 0600, must not exist).
    pub component_out: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmAnswers {
    /// The answer to every y/n question (default yes).
    #[serde(default = "yes")]
    pub answer: bool,
    /// Step numbers (from 1) at which every y/n question is answered no.
    #[serde(default)]
    pub no_at_steps: Vec<usize>,
}

fn yes() -> bool {
    true
}

impl Default for ConfirmAnswers {
    fn default() -> Self {
        ConfirmAnswers {
            answer: true,
            no_at_steps: Vec::new(),
        }
    }
}

/// The answers file (`--answers answers.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    /// Who is present in each of the script's roles, in order.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub people: BTreeMap<String, PersonAnswers>,
    #[serde(default)]
    pub confirm: ConfirmAnswers,
    /// Relative paths are taken from the answers file's directory.
    #[serde(skip)]
    pub base: PathBuf,
}

impl Answers {
    pub fn load(path: &Path) -> Result<Answers, ConsoleError> {
        let bad = |why: String| ConsoleError::Answers {
            path: path.to_owned(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut a: Answers = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        a.base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(a)
    }
}

/// Non-interactive: every question answered from an [`Answers`]; what
/// would be shown is kept (for the process output and tests).
pub struct ScriptedConsole {
    answers: Answers,
    /// Everything said, in order.
    pub shown: Vec<String>,
    /// Echo what is said to stdout.
    pub echo: bool,
}

impl ScriptedConsole {
    pub fn new(answers: Answers) -> ScriptedConsole {
        ScriptedConsole {
            answers,
            shown: Vec::new(),
            echo: true,
        }
    }

    fn person<'a>(&'a self, q: &Question) -> Result<&'a PersonAnswers, ConsoleError> {
        let name = q.person.as_deref().ok_or_else(|| {
            ConsoleError::Unanswered(format!("step {}: nobody named yet", q.step))
        })?;
        self.answers
            .people
            .get(name)
            .ok_or_else(|| ConsoleError::Unanswered(format!("no [people.{name}] section")))
    }

    fn field<'a>(
        &'a self,
        q: &Question,
        pick: impl Fn(&'a PersonAnswers) -> &'a Option<String>,
        what: &str,
    ) -> Result<&'a str, ConsoleError> {
        let p = self.person(q)?;
        pick(p).as_deref().ok_or_else(|| {
            ConsoleError::Unanswered(format!(
                "step {}: [people.{}] has no {what}",
                q.step,
                q.person.as_deref().unwrap_or("?")
            ))
        })
    }

    fn out(&mut self, text: String) {
        if self.echo {
            println!("{text}");
        }
        self.shown.push(text);
    }
}

impl Console for ScriptedConsole {
    fn say(&mut self, text: &str) {
        self.out(text.to_owned());
    }

    fn ask(&mut self, q: &Question) -> Result<String, ConsoleError> {
        let answer = match q.field {
            Field::Name => self
                .answers
                .roles
                .get(&q.role)
                .and_then(|names| names.get(q.slot))
                .cloned()
                .ok_or_else(|| {
                    ConsoleError::Unanswered(format!(
                        "[roles] {} names no person {}",
                        q.role,
                        q.slot + 1
                    ))
                })?,
            Field::ComponentKcv => self.person(q)?.component_kcv.clone().unwrap_or_default(),
            Field::ApprovalKey => resolve(
                &self.answers.base,
                self.field(q, |p| &p.approval_key, "approval_key")?,
            )
            .display()
            .to_string(),
            Field::ApprovalCert => resolve(
                &self.answers.base,
                self.field(q, |p| &p.approval_cert, "approval_cert")?,
            )
            .display()
            .to_string(),
            other => {
                return Err(ConsoleError::Unanswered(format!(
                    "step {}: {other:?} is not a visible answer",
                    q.step
                )))
            }
        };
        self.out(format!("{}{answer}", q.prompt));
        Ok(answer)
    }

    fn ask_secret(&mut self, q: &Question) -> Result<Zeroizing<String>, ConsoleError> {
        let source = match q.field {
            Field::Pin => self.field(q, |p| &p.pin, "pin")?,
            Field::NewPin | Field::NewPinAgain => self.field(q, |p| &p.new_pin, "new_pin")?,
            Field::Component => self.field(q, |p| &p.component, "component")?,
            Field::Share => self.field(q, |p| &p.share, "share")?,
            other => {
                return Err(ConsoleError::Unanswered(format!(
                    "step {}: {other:?} is not a secret answer",
                    q.step
                )))
            }
        }
        .to_owned();
        let value = read_secret(&source, &self.answers.base).map_err(|why| {
            ConsoleError::Unanswered(format!(
                "step {}: {} of {}: {why}",
                q.step,
                format!("{:?}", q.field).to_lowercase(),
                q.person.as_deref().unwrap_or("?")
            ))
        })?;
        self.out(format!("{}(hidden)", q.prompt));
        Ok(value)
    }

    fn confirm(&mut self, q: &Question) -> Result<bool, ConsoleError> {
        let yes =
            self.answers.confirm.answer && !self.answers.confirm.no_at_steps.contains(&q.step);
        self.out(format!(
            "{} [y/n] {}",
            q.prompt,
            if yes { "y" } else { "n" }
        ));
        Ok(yes)
    }

    fn hand_over(&mut self, q: &Question, secret: &Zeroizing<String>) -> Result<(), ConsoleError> {
        let target = match q.field {
            Field::Component => self.field(q, |p| &p.component_out, "component_out")?,
            _ => self.field(q, |p| &p.share_out, "share_out")?,
        };
        let out = resolve(&self.answers.base, target);
        write_private(&out, secret).map_err(|e| {
            ConsoleError::Unanswered(format!("step {}: {}: {e}", q.step, out.display()))
        })?;
        self.out(format!("{}(written to {})", q.prompt, out.display()));
        Ok(())
    }
}

/// Create `path` readable by its owner only, and write `secret` to it.
fn write_private(path: &Path, secret: &Zeroizing<String>) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")
}
