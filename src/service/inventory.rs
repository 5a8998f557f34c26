//! The inventory: every linked blob and manifest (for air-gapped incremental bundles).

use super::{Error, Registry, RepoFilter};

impl Registry {
    /// What is held, in the repositories `keep` accepts (all when `None`).
    pub fn inventory(&self, keep: Option<&RepoFilter>) -> Result<crate::meta::Inventory, Error> {
        Ok(self.meta.inventory(keep)?)
    }
}
