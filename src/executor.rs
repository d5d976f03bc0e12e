//! The [`Executor`] trait, the dependency traits, and in-memory dependency stores.
//!
//! Secrets and configs reach a task through its executor: the agent puts them into
//! the executor's stores ([`DependencyManager`]) before the tasks that need them, and
//! a controller reads them through a view restricted to what its task's spec
//! references ([`DependencyStore::restrict`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::api::{Config, EncryptionKey, Node, NodeDescription, Secret, Task};
use crate::{CancelToken, Controller, Error};

/// Provides controllers for tasks, and describes the node it runs them on.
pub trait Executor: Send + Sync {
    /// The node as this executor sees it.
    fn describe(&self, cancel: &CancelToken) -> Result<NodeDescription, Error>;

    /// Passes the node's state, as the managers see it, on to the executor.
    fn configure(&self, cancel: &CancelToken, node: &Node) -> Result<(), Error>;

    /// A controller for `task`. Fails with [`Error::RuntimeUnsupported`] when the
    /// executor cannot run the task's runtime.
    fn controller(&self, task: &Task) -> Result<Box<dyn Controller>, Error>;

    /// Hands the managers' network bootstrap keys to the executor.
    fn set_network_bootstrap_keys(&self, keys: &[EncryptionKey]) -> Result<(), Error>;

    /// The executor's secret and config stores, when it keeps them.
    fn dependencies(&self) -> Option<&dyn DependencyManager> {
        None
    }
}

/// Reads secrets.
pub trait SecretGetter: Send + Sync {
    /// The secret with this id; [`Error::NotFound`] when there is none, or
    /// [`Error::NotAuthorized`] when the caller may not read it.
    fn get(&self, secret_id: &str) -> Result<Arc<Secret>, Error>;
}

/// Stores secrets.
pub trait SecretsManager: SecretGetter {
    /// Adds secrets, replacing those with the same ids.
    fn add(&self, secrets: Vec<Secret>);
    /// Removes the secrets with these ids; unknown ids are ignored.
    fn remove(&self, secret_ids: &[String]);
    /// Removes every secret.
    fn reset(&self);
}

/// Implemented by what stores secrets, typically an executor.
pub trait SecretsProvider: Send + Sync {
    /// The secrets store.
    fn secrets(&self) -> &dyn SecretsManager;
}

/// Reads configs.
pub trait ConfigGetter: Send + Sync {
    /// The config with this id; [`Error::NotFound`] when there is none, or
    /// [`Error::NotAuthorized`] when the caller may not read it.
    fn get(&self, config_id: &str) -> Result<Arc<Config>, Error>;
}

/// Stores configs.
pub trait ConfigsManager: ConfigGetter {
    /// Adds configs, replacing those with the same ids.
    fn add(&self, configs: Vec<Config>);
    /// Removes the configs with these ids; unknown ids are ignored.
    fn remove(&self, config_ids: &[String]);
    /// Removes every config.
    fn reset(&self);
}

/// Implemented by what stores configs, typically an executor.
pub trait ConfigsProvider: Send + Sync {
    /// The configs store.
    fn configs(&self) -> &dyn ConfigsManager;
}

/// Reads every kind of dependency a controller may need.
pub trait DependencyGetter: Send + Sync {
    /// The secrets that can be read.
    fn secrets(&self) -> &dyn SecretGetter;
    /// The configs that can be read.
    fn configs(&self) -> &dyn ConfigGetter;
}

/// Stores every kind of dependency.
pub trait DependencyManager: SecretsProvider + ConfigsProvider {}

impl<T: SecretsProvider + ConfigsProvider> DependencyManager for T {}

/// Something kept in a [`Store`], found by its id.
pub trait Dependency: Send + Sync {
    /// What it is called in messages: `"secret"` or `"config"`.
    const KIND: &'static str;
    /// Its id.
    fn id(&self) -> &str;
}

impl Dependency for Secret {
    const KIND: &'static str = "secret";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Dependency for Config {
    const KIND: &'static str = "config";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A thread-safe, in-memory store of secrets or configs, keyed by id.
///
/// Items are kept behind `Arc`s, so reads hand out the same allocation instead of
/// copying secret bytes around.
pub struct Store<T> {
    items: RwLock<HashMap<String, Arc<T>>>,
}

impl<T: Dependency> Store<T> {
    /// An empty store.
    pub fn new() -> Self {
        Store {
            items: RwLock::new(HashMap::new()),
        }
    }

    /// The item with this id, or [`Error::NotFound`].
    pub fn get(&self, id: &str) -> Result<Arc<T>, Error> {
        self.items
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: T::KIND,
                id: id.to_owned(),
            })
    }

    /// Adds items, replacing those with the same ids.
    pub fn add(&self, items: Vec<T>) {
        let mut map = self.items.write();
        for item in items {
            map.insert(item.id().to_owned(), Arc::new(item));
        }
    }

    /// Removes the items with these ids; unknown ids are ignored.
    pub fn remove(&self, ids: &[String]) {
        let mut map = self.items.write();
        for id in ids {
            map.remove(id);
        }
    }

    /// Removes every item.
    pub fn reset(&self) {
        self.items.write().clear();
    }

    /// How many items the store holds.
    pub fn len(&self) -> usize {
        self.items.read().len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.read().is_empty()
    }
}

impl<T: Dependency> Default for Store<T> {
    fn default() -> Self {
        Store::new()
    }
}

impl<T> std::fmt::Debug for Store<T> {
    /// Lists ids only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.items.read().keys()).finish()
    }
}

/// A read-only view of a [`Store`] that serves only the ids a task references.
pub struct RestrictedStore<T> {
    store: Arc<Store<T>>,
    allowed: HashSet<String>,
}

impl<T: Dependency> RestrictedStore<T> {
    /// A view of `store` that serves only `allowed`.
    pub fn new(store: Arc<Store<T>>, allowed: impl IntoIterator<Item = String>) -> Self {
        RestrictedStore {
            store,
            allowed: allowed.into_iter().collect(),
        }
    }

    /// The item with this id when it is allowed, else [`Error::NotAuthorized`]
    /// (whether or not the store holds it, so a refusal reveals nothing).
    pub fn get(&self, id: &str) -> Result<Arc<T>, Error> {
        if !self.allowed.contains(id) {
            return Err(Error::NotAuthorized {
                kind: T::KIND,
                id: id.to_owned(),
            });
        }
        self.store.get(id)
    }
}

impl<T> std::fmt::Debug for RestrictedStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestrictedStore")
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// Implements the getter and manager traits of one dependency kind by delegating to
/// the generic stores, so that secrets and configs share one implementation.
macro_rules! dependency_traits {
    ($item:ty, $getter:ident, $manager:ident) => {
        impl $getter for Store<$item> {
            fn get(&self, id: &str) -> Result<Arc<$item>, Error> {
                Store::get(self, id)
            }
        }

        impl $manager for Store<$item> {
            fn add(&self, items: Vec<$item>) {
                Store::add(self, items)
            }
            fn remove(&self, ids: &[String]) {
                Store::remove(self, ids)
            }
            fn reset(&self) {
                Store::reset(self)
            }
        }

        impl $getter for RestrictedStore<$item> {
            fn get(&self, id: &str) -> Result<Arc<$item>, Error> {
                RestrictedStore::get(self, id)
            }
        }
    };
}

dependency_traits!(Secret, SecretGetter, SecretsManager);
dependency_traits!(Config, ConfigGetter, ConfigsManager);

/// The secrets and configs of an executor: a ready [`DependencyManager`].
///
/// ```
/// use swarmexec::api::{ProcessSpec, Runtime, Secret, SecretReference, Task, TaskSpec};
/// use swarmexec::executor::DependencyStore;
/// use swarmexec::{DependencyGetter, SecretsProvider};
///
/// let store = DependencyStore::new();
/// store.secrets().add(vec![
///     Secret { id: "db".into(), data: b"hunter2".to_vec(), ..Default::default() },
///     Secret { id: "other".into(), data: b"not yours".to_vec(), ..Default::default() },
/// ]);
/// let spec = ProcessSpec {
///     secrets: vec![SecretReference { secret_id: "db".into(), ..Default::default() }],
///     ..Default::default()
/// };
/// let task = Task {
///     spec: TaskSpec { runtime: Some(Runtime::Process(spec)), ..Default::default() },
///     ..Default::default()
/// };
/// let view = store.restrict(&task);
/// assert_eq!(view.secrets().get("db").unwrap().data, b"hunter2");
/// let refused = view.secrets().get("other").unwrap_err();
/// assert_eq!(refused.to_string(), "task not authorized to access secret other");
/// ```
#[derive(Debug, Default)]
pub struct DependencyStore {
    secrets: Arc<Store<Secret>>,
    configs: Arc<Store<Config>>,
}

impl DependencyStore {
    /// Empty stores.
    pub fn new() -> Self {
        DependencyStore::default()
    }

    /// A view that can read only the secrets and configs that `task`'s spec
    /// references. It sees later changes to the stores.
    pub fn restrict(&self, task: &Task) -> TaskDependencies {
        let secret_ids = task.spec.secret_references().iter();
        let config_ids = task.spec.config_references().iter();
        TaskDependencies {
            secrets: RestrictedStore::new(
                Arc::clone(&self.secrets),
                secret_ids.map(|r| r.secret_id.clone()),
            ),
            configs: RestrictedStore::new(
                Arc::clone(&self.configs),
                config_ids.map(|r| r.config_id.clone()),
            ),
        }
    }
}

impl SecretsProvider for DependencyStore {
    fn secrets(&self) -> &dyn SecretsManager {
        &*self.secrets
    }
}

impl ConfigsProvider for DependencyStore {
    fn configs(&self) -> &dyn ConfigsManager {
        &*self.configs
    }
}

/// One task's view of a [`DependencyStore`], made by
/// [`DependencyStore::restrict`].
#[derive(Debug)]
pub struct TaskDependencies {
    secrets: RestrictedStore<Secret>,
    configs: RestrictedStore<Config>,
}

impl DependencyGetter for TaskDependencies {
    fn secrets(&self) -> &dyn SecretGetter {
        &self.secrets
    }

    fn configs(&self) -> &dyn ConfigGetter {
        &self.configs
    }
}
