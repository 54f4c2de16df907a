//! The core's one table of client transactions: who started each one (a call's request, a
//! trunk's REGISTER/OPTIONS, a qualify probe), so a response, a timeout or the end of a
//! transaction goes straight to its owner instead of being offered to calls, trunks and
//! qualify in turn.

use bytes::Bytes;
use podpbx_b2bua::ReqId;
use podpbx_sip::transaction::ClientTxId;
use std::collections::HashMap;

/// Who started a client transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A request of the b2bua.
    Call(ReqId),
    /// A trunk's request: the trunk slot and the request's branch.
    Trunk { slot: u64, branch: Bytes },
    /// A qualify OPTIONS to a binding.
    Qualify { binding: u64 },
    /// A NOTIFY of a subscription (MWI, BLF) or an unsolicited MWI.
    Notify(podpbx_presence::NotifyId),
}

/// Client transaction -> owner, with the b2bua's request ids indexed both ways (the b2bua
/// abandons a request by its own id).
#[derive(Debug, Default)]
pub struct Owners {
    by_tx: HashMap<ClientTxId, Owner>,
    by_req: HashMap<ReqId, ClientTxId>,
}

impl Owners {
    /// Records the owner of a transaction just started.
    pub fn insert(&mut self, id: ClientTxId, owner: Owner) {
        if let Owner::Call(req) = owner {
            self.by_req.insert(req, id);
        }
        self.by_tx.insert(id, owner);
    }

    /// The owner of `id`.
    pub fn get(&self, id: ClientTxId) -> Option<&Owner> {
        self.by_tx.get(&id)
    }

    /// Forgets `id` and returns its owner.
    pub fn remove(&mut self, id: ClientTxId) -> Option<Owner> {
        let owner = self.by_tx.remove(&id)?;
        if let Owner::Call(req) = owner {
            self.by_req.remove(&req);
        }
        Some(owner)
    }

    /// Forgets the transaction of b2bua request `req` and returns it.
    pub fn remove_call(&mut self, req: ReqId) -> Option<ClientTxId> {
        let id = self.by_req.remove(&req)?;
        self.by_tx.remove(&id);
        Some(id)
    }

    /// Gives back the room a load left ([`podpbx_sip::capacity`]).
    pub fn shrink(&mut self) -> bool {
        let by_tx = podpbx_sip::capacity::shrink_map(&mut self.by_tx);
        podpbx_sip::capacity::shrink_map(&mut self.by_req) || by_tx
    }

    /// Transactions in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_tx.len()
    }
}
