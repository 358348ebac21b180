//! sled transaction helpers and the user/identity half of a login, run inside a transaction.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::store::policy::{self, Owner};
use crate::store::{
    email_key, identity_key, username_base, IdentityRecord, LoginCommit, LoginWrite, StoreError,
    StoreResult, UserRecord,
};

pub(super) fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> StoreResult<T> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(error)) => Err(error),
        Err(TransactionError::Storage(error)) => Err(backend(error)),
    }
}

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

pub(super) fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

/// The user/identity part of a login, inside a transaction.
pub(super) fn login_tx(
    write: &LoginWrite,
    users: &TransactionalTree,
    identities: &TransactionalTree,
    emails: &TransactionalTree,
    usernames: &TransactionalTree,
    links: &TransactionalTree,
) -> TxResult<LoginCommit> {
    let profile = &write.profile;
    let identity_key = identity_key(&write.provider, &profile.subject);
    let email = profile.email.as_deref().map(email_key);

    if let Some(identity) = tx_get::<IdentityRecord>(identities, identity_key.as_bytes())? {
        return returning_tx(write, identity, &identity_key, users, identities, emails);
    }

    let email_owner = match &email {
        Some(e) => {
            tx_get_raw(emails, e.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned())
        }
        None => None,
    };
    let owner = match policy::owner_of_new_identity(write, email_owner) {
        Ok(owner) => owner,
        Err(error) => return abort(error),
    };
    let (user, new_user) = match owner {
        Owner::Linking(link_user) => {
            let Some(user) = tx_get::<UserRecord>(users, link_user.as_bytes())? else {
                return abort(StoreError::NotFound(format!("user {link_user}")));
            };
            may_log_in(&user)?;
            (user, false)
        }
        Owner::HoldsEmail(owner) => {
            let Some(user) = tx_get::<UserRecord>(users, owner.as_bytes())? else {
                return abort(StoreError::Corrupt(format!(
                    "email points at missing {owner}"
                )));
            };
            may_log_in(&user)?;
            (user, false)
        }
        Owner::NewUser => {
            let username = unique_username(usernames, &username_base(profile))?;
            let user = write.new_user(policy::new_user_id(), username.clone());
            tx_put(users, user.id.as_bytes(), &user)?;
            usernames.insert(username.as_bytes(), user.id.as_bytes())?;
            if let Some(e) = &email {
                emails.insert(e.as_bytes(), user.id.as_bytes())?;
            }
            (user, true)
        }
    };
    let identity = write.new_identity(&user.id);
    tx_put(identities, identity_key.as_bytes(), &identity)?;
    links.insert(
        format!("{}\0{identity_key}", user.id).as_bytes(),
        identity_key.as_bytes(),
    )?;
    Ok(LoginCommit {
        user,
        identity,
        new_user,
        new_identity: true,
        changed: Vec::new(),
    })
}

/// A returning identity, inside the login's transaction: refresh what the provider says
/// now, about the identity and its user (`policy::profile`).
fn returning_tx(
    write: &LoginWrite,
    mut identity: IdentityRecord,
    identity_key: &str,
    users: &TransactionalTree,
    identities: &TransactionalTree,
    emails: &TransactionalTree,
) -> TxResult<LoginCommit> {
    let previous_email = identity.email.clone();
    let identity_changes = write.refresh(&mut identity).or_else(abort)?;
    tx_put(identities, identity_key.as_bytes(), &identity)?;
    let Some(user) = tx_get::<UserRecord>(users, identity.user_id.as_bytes())? else {
        return abort(StoreError::Corrupt(format!(
            "identity points at missing user {}",
            identity.user_id
        )));
    };
    may_log_in(&user)?;
    let mut update = write.update_user(&user, previous_email.as_deref());
    if let Some(moved) = update.email_move.clone() {
        match tx_get_raw(emails, moved.to.as_bytes())? {
            Some(owner) if owner != user.id.as_bytes() => update = update.keep_email(&user),
            _ => {
                emails.insert(moved.to.as_bytes(), user.id.as_bytes())?;
                if let Some(from) = &moved.from {
                    if tx_get_raw(emails, from.as_bytes())?.as_deref() == Some(user.id.as_bytes()) {
                        emails.remove(from.as_bytes())?;
                    }
                }
            }
        }
    }
    if !update.changed.is_empty() {
        tx_put(users, user.id.as_bytes(), &update.user)?;
    }
    let changed = update
        .changed
        .iter()
        .chain(&identity_changes)
        .map(|f| (*f).to_owned())
        .collect();
    Ok(LoginCommit {
        user: update.user,
        identity,
        new_user: false,
        new_identity: false,
        changed,
    })
}

/// A disabled user's logins end here (`Disabled`), whichever way they reach the user.
fn may_log_in(user: &UserRecord) -> TxResult<()> {
    policy::check_may_log_in(user).or_else(abort)
}

fn unique_username(usernames: &TransactionalTree, base: &str) -> TxResult<String> {
    for candidate in policy::username_candidates(base) {
        if tx_get_raw(usernames, candidate.as_bytes())?.is_none() {
            return Ok(candidate);
        }
    }
    abort(StoreError::Conflict("no free username".into()))
}

pub(super) fn tx_get_raw(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<sled::IVec>> {
    tree.get(key).map_err(Into::into)
}

pub(super) fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tx_get_raw(tree, key)? {
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

pub(super) fn tx_put<T: Serialize>(
    tree: &TransactionalTree,
    key: &[u8],
    value: &T,
) -> TxResult<()> {
    let bytes = encode(value).map_err(ConflictableTransactionError::Abort)?;
    tree.insert(key, bytes)?;
    Ok(())
}

pub(super) fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> StoreResult<Option<T>> {
    tree.get(key)
        .map_err(backend)?
        .map(|b| decode(&b))
        .transpose()
}

pub(super) use crate::store::{decode, encode};

pub(super) fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}
