//! Why a read that reached the loader failed: [`LoadError<E>`], typed by the
//! loader's own error `E` (no downcasting), and `Failure`, the same without
//! its type, which single-flight hands to every waiter of a load.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, LoaderTimedOut};

/// A failed load: the loader's own error, or the load abandoned.
///
/// Returned by [`get_or_load`](crate::TieredCache::get_or_load) and its
/// siblings. The loader's error is shared: every caller coalesced onto the
/// same load gets a clone of the same `Arc<E>`. Nothing failed is cached;
/// the next call runs the loader again. `?` turns it into an
/// [`Error::Loader`].
///
/// # Example
///
/// ```
/// use tiercache::{LoadError, TieredCache};
///
/// #[derive(Debug, thiserror::Error)]
/// enum DbError {
///     #[error("row locked")]
///     Locked,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiercache::Error> {
/// let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
/// let failed = cache
///     .get_or_load(&7, || async { Err::<Option<String>, _>(DbError::Locked) })
///     .await
///     .unwrap_err();
/// match failed {
///     LoadError::Loader(error) => assert!(matches!(*error, DbError::Locked)),
///     other => panic!("not the loader's error: {other}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError<E> {
    /// The loader (this caller's, or the one it waited for) failed.
    Loader(Arc<E>),
    /// The load was abandoned at the hard timeout (see
    /// [`TieredCacheBuilder::hard_timeout`](crate::TieredCacheBuilder::hard_timeout)).
    TimedOut(Duration),
    /// The loader panicked (in a load finishing in the background).
    Panicked,
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Loader(error) => Self::Loader(Arc::clone(error)),
            Self::TimedOut(limit) => Self::TimedOut(*limit),
            Self::Panicked => Self::Panicked,
        }
    }
}

impl<E> LoadError<E> {
    /// The loader's own error, if it failed.
    pub fn loader_error(&self) -> Option<&Arc<E>> {
        match self {
            Self::Loader(error) => Some(error),
            Self::TimedOut(_) | Self::Panicked => None,
        }
    }

    /// Whether the loader itself failed.
    pub fn is_loader(&self) -> bool {
        matches!(self, Self::Loader(_))
    }

    /// Whether the load was abandoned at the hard timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut(_))
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loader(error) => write!(f, "the cache loader failed: {error}"),
            Self::TimedOut(limit) => fmt::Display::fmt(&LoaderTimedOut(*limit), f),
            Self::Panicked => fmt::Display::fmt(&LoaderPanicked, f),
        }
    }
}

impl<E: StdError + 'static> StdError for LoadError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Loader(error) => Some(error.as_ref()),
            Self::TimedOut(_) | Self::Panicked => None,
        }
    }
}

impl<E: StdError + Send + Sync + 'static> From<LoadError<E>> for Error {
    fn from(error: LoadError<E>) -> Self {
        Self::Loader(match error {
            LoadError::Loader(error) => error,
            LoadError::TimedOut(limit) => Arc::new(LoaderTimedOut(limit)),
            LoadError::Panicked => Arc::new(LoaderPanicked),
        })
    }
}

/// The loader error of an [`Error::Loader`] converted from
/// [`LoadError::Panicked`].
#[derive(Debug, thiserror::Error)]
#[error("the cache loader panicked")]
struct LoaderPanicked;

/// A [`LoadError`] without its loader error's type, as single-flight shares
/// it. Loads are keyed by that type too, so every waiter gets back the type
/// it expects.
#[derive(Clone)]
pub(crate) enum Failure {
    Loader {
        /// For logs.
        error: Arc<dyn StdError + Send + Sync>,
        /// The same error, for [`typed`](Failure::typed).
        any: Arc<dyn Any + Send + Sync>,
    },
    TimedOut(Duration),
    Panicked,
}

impl Failure {
    pub(crate) fn loader<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        let error = Arc::new(error);
        Self::Loader {
            error: Arc::clone(&error) as Arc<dyn StdError + Send + Sync>,
            any: error,
        }
    }

    /// Back to the [`LoadError`] of the loader's error type `E`.
    ///
    /// # Panics
    ///
    /// If the loader's error is not an `E`: flights are keyed by the error
    /// type, so a waiter only ever gets a failure of its own type.
    pub(crate) fn typed<E: Send + Sync + 'static>(self) -> LoadError<E> {
        match self {
            Self::Loader { any, .. } => match any.downcast::<E>() {
                Ok(error) => LoadError::Loader(error),
                Err(_) => unreachable!("a load's failure reached a caller of another error type"),
            },
            Self::TimedOut(limit) => LoadError::TimedOut(limit),
            Self::Panicked => LoadError::Panicked,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loader { error, .. } => fmt::Display::fmt(error, f),
            Self::TimedOut(limit) => fmt::Display::fmt(&LoaderTimedOut(*limit), f),
            Self::Panicked => fmt::Display::fmt(&LoaderPanicked, f),
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loader { error, .. } => f.debug_tuple("Loader").field(error).finish(),
            Self::TimedOut(limit) => f.debug_tuple("TimedOut").field(limit).finish(),
            Self::Panicked => f.write_str("Panicked"),
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
    fn a_failure_comes_back_typed_and_converts_to_an_error() {
        let failure = Failure::loader(Boom);
        assert_eq!(failure.to_string(), "boom");
        let typed = failure.typed::<Boom>();
        assert!(matches!(
            typed.loader_error().map(|e| e.as_ref()),
            Some(Boom)
        ));
        assert_eq!(typed.to_string(), "the cache loader failed: boom");
        let error = Error::from(typed);
        assert!(error.is_loader() && !error.is_timeout());

        let timed_out = Failure::TimedOut(Duration::from_secs(2)).typed::<Boom>();
        assert!(timed_out.is_timeout());
        assert!(Error::from(timed_out).is_timeout());
    }
}
