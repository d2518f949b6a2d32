//! How the catalog API changes the stored catalog: load it, apply the change, validate the
//! whole result and save it under the loaded revision, again when somebody saved in between.

use super::api::Catalog;
use super::data::CatalogData;
use super::error::CatalogError;

/// How many times a change is tried when other writers keep saving in between.
const ATTEMPTS: u32 = 32;

impl Catalog {
    /// Applies `change` to the stored catalog, validates, and saves; retries on a conflict.
    ///
    /// `change` runs once per attempt on a freshly loaded catalog, so it must not consume
    /// anything it captures. Its error (a refused permission check, a missing object, an
    /// invalid edit) ends the update at once, as does a validation or store error; nothing is
    /// saved then. Returns what `change` returned in the attempt that was saved, or
    /// [`CatalogError::Conflict`] after [`ATTEMPTS`] lost races.
    pub(crate) async fn update<T>(
        &self,
        mut change: impl FnMut(&mut CatalogData) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        for _ in 0..ATTEMPTS {
            let stored = self.store().load_catalog().await?;
            let mut data = stored.data;
            let out = change(&mut data)?;
            data.validate()?;
            if self
                .store()
                .save_catalog(stored.revision, &data)
                .await?
                .is_some()
            {
                return Ok(out);
            }
        }
        Err(CatalogError::Conflict { attempts: ATTEMPTS })
    }
}
