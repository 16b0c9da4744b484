//! The crate's one error type: opaque, with predicates for the cases callers branch on.

use std::fmt;

/// What went wrong, in a form callers can branch on without matching on strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A listen or connect URL could not be understood.
    InvalidUrl,
    /// A setting or argument is out of range or contradicts another.
    Config,
    /// An operating-system call failed.
    Io,
    /// `start` found a master already running for this program.
    AlreadyRunning,
    /// A command needed a running master and found none.
    NotRunning,
    /// The master or a worker answered out of protocol, or not in time.
    Control,
}

/// The error type of every fallible oxwork call.
///
/// Its `Debug` form is its message, so `fn main() -> oxwork::Result<()>` prints a readable
/// `Error: ...` line.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<std::io::Error>,
}

/// `Result` with oxwork's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            message: context.into(),
            source: Some(source),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when a master is already running (a second `start`).
    pub fn is_already_running(&self) -> bool {
        self.kind == ErrorKind::AlreadyRunning
    }

    /// True when a command found no running master.
    pub fn is_not_running(&self) -> bool {
        self.kind == ErrorKind::NotRunning
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, source),
            None => f.write_str(&self.message),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("I/O error", e)
    }
}
