//! The errors a caller of `tiercache` can see, grouped by what the caller can do.
//!
//! Redis failures and undecodable cached values are deliberately absent: the
//! cache absorbs them (they become misses, counted in the stats), so a
//! request never fails because a cache level did.

use std::error::Error as StdError;
use std::sync::Arc;

/// An error returned by `tiercache`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`LoadError`](crate::LoadError) turned into an `Error` (by `?`):
    /// the loader's error, a [`LoaderTimedOut`] or a panic, untyped. Match
    /// on the `LoadError` instead to get the loader's error typed.
    #[error("the cache loader failed")]
    Loader(#[source] Arc<dyn StdError + Send + Sync>),

    /// A write-behind change whose version is not newer than the one Redis
    /// holds: another writer got there first. Read the current value again
    /// and retry.
    #[error("a newer version of this key is cached already")]
    Conflict,

    /// A write-behind change could not be queued: Redis is unreachable (or
    /// the cache has no write-behind queue). Nothing was changed.
    #[error("the write-behind queue is unavailable")]
    Unavailable,

    /// The cache was configured with an invalid value (a bound of zero, a
    /// Redis URL that does not parse…). Only returned while building.
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

/// The loader error of a load abandoned at the hard timeout (see
/// [`TieredCacheBuilder::hard_timeout`](crate::TieredCacheBuilder::hard_timeout))
/// once its [`LoadError::TimedOut`](crate::LoadError::TimedOut) became an
/// [`Error::Loader`]; [`Error::is_timeout`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cache loader took longer than {0:?}")]
pub struct LoaderTimedOut(pub std::time::Duration);

impl Error {
    /// Whether this is a load abandoned at the hard timeout.
    pub fn is_timeout(&self) -> bool {
        self.loader_error()
            .is_some_and(|e| e.downcast_ref::<LoaderTimedOut>().is_some())
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    /// Whether this is a loader failure.
    pub fn is_loader(&self) -> bool {
        matches!(self, Self::Loader(_))
    }

    /// Whether this is a write-behind version conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict)
    }

    /// Whether a write-behind change could not be queued.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable)
    }

    /// Whether this is a configuration error.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }

    /// The loader's own error, if this is a loader failure.
    ///
    /// Downcast it to the loader's error type to recover the original:
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # #[derive(Debug, thiserror::Error)] #[error("db down")] struct DbError;
    /// let error = tiercache::Error::Loader(Arc::new(DbError));
    /// let source = error.loader_error().expect("a loader error");
    /// assert!(source.downcast_ref::<DbError>().is_some());
    /// ```
    pub fn loader_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            Self::Loader(source) => Some(source.as_ref()),
            Self::Config(_) | Self::Conflict | Self::Unavailable => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[test]
    fn loader_error_keeps_its_source_for_downcasting() {
        let error = Error::Loader(Arc::new(Boom));
        assert!(error.is_loader());
        assert!(!error.is_config());
        let source = StdError::source(&error).expect("a source");
        assert_eq!(source.to_string(), "boom");
        assert!(
            error
                .loader_error()
                .unwrap()
                .downcast_ref::<Boom>()
                .is_some()
        );
    }

    #[test]
    fn config_error_names_the_problem() {
        let error = Error::config("L1 bounds must be positive");
        assert!(error.is_config());
        assert!(error.loader_error().is_none());
        assert_eq!(
            error.to_string(),
            "invalid cache configuration: L1 bounds must be positive"
        );
    }
}
