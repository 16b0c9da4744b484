//! The bus of the current process: who this process is, which bus it uses, and the one
//! connection every feature shares (made on first use).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use super::config::BusChoice;
use super::{Bus, BusError};

/// This process's place in the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) node: String,
    pub(crate) group: String,
    pub(crate) id: u32,
}

type SetupFn = Box<dyn Fn(&Bus)>;

struct Local {
    identity: Identity,
    choice: BusChoice,
    hub_path: PathBuf,
    need_hub: Rc<dyn Fn()>,
    bus: Option<Bus>,
    on_connect: Vec<SetupFn>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Called once by a worker process before its workers start.
pub(crate) fn init(
    identity: Identity,
    choice: BusChoice,
    hub_path: PathBuf,
    need_hub: Rc<dyn Fn()>,
) {
    LOCAL.with(|l| {
        *l.borrow_mut() = Some(Local {
            identity,
            choice,
            hub_path,
            need_hub,
            bus: None,
            on_connect: Vec::new(),
        })
    });
}

/// This process's identity, if it is a worker process.
pub(crate) fn identity() -> Option<Identity> {
    LOCAL.with(|l| l.borrow().as_ref().map(|l| l.identity.clone()))
}

/// Runs `f` with the bus now if it is already connected, and in any case right after the
/// connection is first made (features that subscribe use this, so they cost nothing until the
/// program uses the bus).
pub(crate) fn when_connected(f: impl Fn(&Bus) + 'static) {
    let mut f: Option<SetupFn> = Some(Box::new(f));
    let existing = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let local = l.as_mut()?;
        match &local.bus {
            Some(b) => Some(b.clone()),
            None => {
                if let Some(f) = f.take() {
                    local.on_connect.push(f);
                }
                None
            }
        }
    });
    // Called outside the borrow: `f` may use the bus API.
    if let (Some(b), Some(f)) = (existing, f) {
        let _ = crate::runtime::guard::guarded("bus setup", || f(&b));
    }
}

/// The process's bus connection, made on first use.
pub fn bus() -> Result<Bus, BusError> {
    let (bus, fresh, hooks) = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let Some(local) = l.as_mut() else {
            return Err(BusError::NotAvailable);
        };
        if let Some(b) = &local.bus {
            return Ok((b.clone(), false, Vec::new()));
        }
        let name = format!(
            "{}/{}/{}",
            local.identity.node, local.identity.group, local.identity.id
        );
        let bus = match &local.choice {
            BusChoice::Hub => {
                let bus = Bus::connect_hub(&local.hub_path, &name);
                bus.set_on_unreachable(local.need_hub.clone());
                bus
            }
            BusChoice::Nats(settings) => Bus::connect_nats_with((**settings).clone(), &name),
        };
        local.bus = Some(bus.clone());
        Ok((bus, true, std::mem::take(&mut local.on_connect)))
    })?;
    if fresh {
        for hook in hooks {
            let _ = crate::runtime::guard::guarded("bus setup", || hook(&bus));
        }
    }
    Ok(bus)
}

/// Before this process exits: on NATS, running tasks get up to `limit` to finish, the rest go
/// back to their queue at once, and queued messages are sent. (The hub requeues a departed
/// process's tasks itself.)
pub(crate) async fn wind_down(limit: std::time::Duration) {
    let bus = LOCAL.with(|l| l.borrow().as_ref().and_then(|l| l.bus.clone()));
    if let Some(bus) = bus {
        bus.wind_down(limit).await;
    }
}
