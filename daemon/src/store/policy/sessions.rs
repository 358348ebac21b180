//! The session rules both backends follow: what presenting a refresh token does (rotation,
//! the reuse grace, reuse detection), revocation, which families are live, and whether a
//! user may log in or keep a session.

use super::super::{
    FamilyRecord, RefreshTerms, Rotation, SessionRecord, StoreError, StoreResult, UserRecord,
};

/// The longest chain of refresh tokens a family may have: a token a minute for 19 years.
/// Walking one longer means the store is corrupt (a cycle).
pub(crate) const MAX_CHAIN: usize = 10_000_000;

/// What presenting a refresh token does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RotationPlan {
    /// Unknown, expired, of a revoked family, or of a user who is disabled or gone: nothing
    /// changes.
    Refuse,
    /// Used before, outside the grace (a stolen token, or a client replaying one): write
    /// the family, now revoked, and report [`Rotation::Reused`].
    RevokeFamily {
        family_id: String,
        family: FamilyRecord,
        outcome: Rotation,
    },
    /// Write the old token as spent, its successor, and the family (refreshed now), and
    /// report [`Rotation::Rotated`].
    Rotate {
        spent: SessionRecord,
        successor: SessionRecord,
        family: FamilyRecord,
        outcome: Rotation,
    },
    /// The same exchange again within the grace: write nothing (but the family, when the
    /// rotation's note on it was lost: a JetStream write whose answer went missing), report
    /// [`Rotation::Repeated`].
    Repeat {
        outcome: Rotation,
        family: Option<FamilyRecord>,
    },
}

/// A refresh token presented: what the store holds for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presented<'a> {
    /// The token's record.
    pub old: Option<&'a SessionRecord>,
    /// Its family's.
    pub family: Option<&'a FamilyRecord>,
    /// Its user's.
    pub user: Option<&'a UserRecord>,
}

/// The refresh-rotation rule. A refresh token is good once; presented again within the
/// grace it answers the successor it was exchanged for (two tabs, a retried request), and
/// after the grace (or for a successor it does not name) it revokes the whole family.
pub(crate) fn plan_rotation(presented: Presented<'_>, terms: &RefreshTerms) -> RotationPlan {
    let (Some(old), Some(family), Some(user)) = (presented.old, presented.family, presented.user)
    else {
        return RotationPlan::Refuse;
    };
    let now = terms.now;
    if family.revoked_at.is_some()
        || old.expires_at < now
        || user.disabled_at.is_some()
        || family.user_id != old.user_id
        || user.id != old.user_id
    {
        return RotationPlan::Refuse;
    }
    let who = || (old.user_id.clone(), old.family_id.clone());
    if let Some(used_at) = old.used_at {
        let within_grace = terms.grace_secs > 0 && now - used_at < terms.grace_secs;
        let same = old
            .successor
            .as_ref()
            .and_then(|s| terms.candidates.iter().position(|c| c == s));
        if let (true, Some(index)) = (within_grace, same) {
            let (user_id, family_id) = who();
            let noted = family.refreshed_at.is_some_and(|at| at >= used_at);
            let ttl = terms.expires_at - terms.now;
            return RotationPlan::Repeat {
                outcome: Rotation::Repeated {
                    user_id,
                    family_id,
                    index,
                },
                family: (!noted).then(|| refreshed(family, used_at, used_at + ttl)),
            };
        }
        let (user_id, family_id) = who();
        return RotationPlan::RevokeFamily {
            family_id: family_id.clone(),
            family: FamilyRecord {
                revoked_at: Some(now),
                ..family.clone()
            },
            outcome: Rotation::Reused { user_id, family_id },
        };
    }
    let (user_id, family_id) = who();
    RotationPlan::Rotate {
        spent: SessionRecord {
            used_at: Some(now),
            successor: terms.candidates.first().cloned(),
            ..old.clone()
        },
        successor: SessionRecord {
            user_id: user_id.clone(),
            family_id: family_id.clone(),
            created_at: now,
            expires_at: terms.expires_at,
            used_at: None,
            successor: None,
        },
        family: refreshed(family, now, terms.expires_at),
        outcome: Rotation::Rotated { user_id, family_id },
    }
}

/// A user's families as listed: those the index names that are still the user's (an entry
/// can outlive its family, or come before it), oldest first.
pub(crate) fn own_families(
    user_id: &str,
    found: impl IntoIterator<Item = (String, FamilyRecord)>,
) -> Vec<(String, FamilyRecord)> {
    let mut out: Vec<_> = found
        .into_iter()
        .filter(|(_, family)| family.user_id == user_id)
        .collect();
    out.sort_by_key(|(id, family)| (family.created_at, id.clone()));
    out
}

/// Whether a family must be added to its user's index at a refresh: one the previous version
/// made (it does not say when it ends), which a rolling upgrade may have missed.
pub(crate) fn needs_index(family: &FamilyRecord) -> bool {
    family.expires_at.is_none()
}

/// `family` after a refresh at `now` whose token expires at `expires_at` (kept as the
/// newest, should two updates cross).
pub(crate) fn refreshed(family: &FamilyRecord, now: i64, expires_at: i64) -> FamilyRecord {
    FamilyRecord {
        refreshed_at: Some(family.refreshed_at.map_or(now, |at| at.max(now))),
        expires_at: Some(
            family
                .expires_at
                .map_or(expires_at, |at| at.max(expires_at)),
        ),
        ..family.clone()
    }
}

/// The revocation rule: logging out revokes the whole family of the presented token, once.
/// Returns the family to write and (user, family id) to report, or `None` when there is
/// nothing to revoke (unknown token or family, or revoked already).
pub(crate) fn plan_revocation(
    session: Option<&SessionRecord>,
    family: Option<&FamilyRecord>,
    now: i64,
) -> Option<(FamilyRecord, (String, String))> {
    let (session, family) = (session?, family?);
    let revoked = revoke_family(family, &session.user_id, now)?;
    Some((
        revoked,
        (session.user_id.clone(), session.family_id.clone()),
    ))
}

/// Revoking family `family` of user `user_id` by its id: the family to write, or `None` when
/// it is not that user's or is revoked already.
pub(crate) fn revoke_family(
    family: &FamilyRecord,
    user_id: &str,
    now: i64,
) -> Option<FamilyRecord> {
    if family.revoked_at.is_some() || family.user_id != user_id {
        return None;
    }
    Some(FamilyRecord {
        revoked_at: Some(now),
        ..family.clone()
    })
}

/// Whether a family still holds a usable session at `now`: not revoked, its newest refresh
/// token unexpired (a family the previous version made does not say; it counts as live
/// until its first refresh says when it ends).
pub(crate) fn is_live(family: &FamilyRecord, now: i64) -> bool {
    family.revoked_at.is_none() && family.expires_at.is_none_or(|at| at >= now)
}

/// Whether user `user` may have a session now (verify, refresh): it exists and is not
/// disabled.
pub(crate) fn may_hold_sessions(user: Option<&UserRecord>) -> bool {
    user.is_some_and(|u| u.disabled_at.is_none())
}

/// The user's `disabled_at` after disabling it at `at` (`Some`) or enabling it (`None`): a
/// user disabled already keeps its first time.
pub(crate) fn disabled_from(user: &UserRecord, at: Option<i64>) -> Option<i64> {
    at.map(|at| user.disabled_at.unwrap_or(at))
}

/// How many users one page of `admin.user.list` may examine for a filter, per user it may
/// return: a page that finds few matches ends early with a cursor, rather than read the
/// whole store.
pub(crate) const EXAMINED_PER_USER: usize = 20;

/// Whether a user with identity keys `links` (`{provider}\0{subject}`) passes the provider
/// filter.
pub(crate) fn has_provider<'a>(
    mut links: impl Iterator<Item = &'a str>,
    provider: Option<&str>,
) -> bool {
    match provider {
        None => true,
        Some(provider) => links.any(|l| l.split('\0').next() == Some(provider)),
    }
}

/// Whether user `user` may log in: a disabled user's logins end in `Disabled`.
pub(crate) fn check_may_log_in(user: &UserRecord) -> StoreResult<()> {
    match user.disabled_at {
        Some(_) => Err(StoreError::Disabled),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(used_at: Option<i64>, expires_at: i64) -> SessionRecord {
        SessionRecord {
            user_id: "usr_1".into(),
            family_id: "ses_1".into(),
            created_at: 0,
            expires_at,
            used_at,
            successor: used_at.map(|_| "next".into()),
        }
    }

    fn family(revoked_at: Option<i64>) -> FamilyRecord {
        FamilyRecord {
            user_id: "usr_1".into(),
            created_at: 0,
            revoked_at,
            provider: Some("oidc".into()),
            subject: Some("sub".into()),
            client: None,
            refreshed_at: None,
            expires_at: Some(10),
            first: Some("first".into()),
        }
    }

    fn user(disabled_at: Option<i64>) -> UserRecord {
        UserRecord {
            id: "usr_1".into(),
            username: "ada".into(),
            email: None,
            email_verified: false,
            name: None,
            picture: None,
            created_at: 0,
            disabled_at,
        }
    }

    fn plan(
        old: Option<&SessionRecord>,
        family: Option<&FamilyRecord>,
        user: Option<&UserRecord>,
        now: i64,
        grace_secs: i64,
    ) -> RotationPlan {
        plan_rotation(
            Presented { old, family, user },
            &RefreshTerms {
                candidates: vec!["next".to_owned(), "next-old-key".to_owned()],
                now,
                expires_at: 20,
                grace_secs,
            },
        )
    }

    #[test]
    fn a_refresh_token_rotates_once_and_a_reuse_after_the_grace_revokes_the_family() {
        let live = user(None);
        let p = plan(
            Some(&session(None, 10)),
            Some(&family(None)),
            Some(&live),
            5,
            0,
        );
        let RotationPlan::Rotate {
            spent,
            successor,
            family: refreshed,
            ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(spent.used_at, Some(5));
        assert_eq!(spent.successor.as_deref(), Some("next"));
        assert_eq!((successor.created_at, successor.expires_at), (5, 20));
        assert_eq!(successor.family_id, "ses_1");
        assert_eq!(
            (refreshed.refreshed_at, refreshed.expires_at),
            (Some(5), Some(20))
        );

        // Strict (no grace): the same token again revokes the family.
        let p = plan(Some(&spent), Some(&family(None)), Some(&live), 5, 0);
        let RotationPlan::RevokeFamily {
            family: revoked,
            outcome,
            ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(revoked.revoked_at, Some(5));
        assert!(matches!(outcome, Rotation::Reused { .. }));
    }

    #[test]
    fn within_the_grace_the_same_successor_is_answered_and_after_it_the_family_goes() {
        let live = user(None);
        let spent = session(Some(100), 200);
        let noted = FamilyRecord {
            refreshed_at: Some(100),
            ..family(None)
        };
        for now in [100, 104] {
            let p = plan(Some(&spent), Some(&noted), Some(&live), now, 5);
            assert_eq!(
                p,
                RotationPlan::Repeat {
                    outcome: Rotation::Repeated {
                        user_id: "usr_1".into(),
                        family_id: "ses_1".into(),
                        index: 0,
                    },
                    family: None,
                },
                "at {now}"
            );
        }
        // The rotation's note on the family was lost: the repeat writes it.
        let p = plan(Some(&spent), Some(&family(None)), Some(&live), 101, 5);
        let RotationPlan::Repeat {
            family: Some(repaired),
            ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(repaired.refreshed_at, Some(100));
        // The successor's expiry: its rotation's time plus the lifetime these terms give.
        assert_eq!(repaired.expires_at, Some(100 + (20 - 101)));
        let p = plan(Some(&spent), Some(&family(None)), Some(&live), 105, 5);
        assert!(matches!(p, RotationPlan::RevokeFamily { .. }), "{p:?}");
        // The successor a previous master key derived is recognised too.
        let by_old_key = SessionRecord {
            successor: Some("next-old-key".into()),
            ..spent.clone()
        };
        let p = plan(Some(&by_old_key), Some(&family(None)), Some(&live), 101, 5);
        assert!(matches!(
            p,
            RotationPlan::Repeat {
                outcome: Rotation::Repeated { index: 1, .. },
                ..
            }
        ));
        // A token that names no successor we derive (exchanged by the previous version)
        // is a reuse even within the grace.
        let unknown = SessionRecord {
            successor: Some("random".into()),
            ..spent
        };
        let p = plan(Some(&unknown), Some(&family(None)), Some(&live), 101, 5);
        assert!(matches!(p, RotationPlan::RevokeFamily { .. }), "{p:?}");
    }

    #[test]
    fn unknown_expired_revoked_and_disabled_are_refused() {
        let live = user(None);
        let refused = |old: Option<&SessionRecord>,
                       family: Option<&FamilyRecord>,
                       user: Option<&UserRecord>| {
            plan(old, family, user, 5, 5) == RotationPlan::Refuse
        };
        assert!(refused(None, None, Some(&live)));
        assert!(refused(Some(&session(None, 10)), None, Some(&live)));
        assert!(refused(
            Some(&session(None, 4)),
            Some(&family(None)),
            Some(&live)
        ));
        assert!(refused(
            Some(&session(None, 10)),
            Some(&family(Some(1))),
            Some(&live)
        ));
        // A used token of a revoked family is refused, not revoked again.
        assert!(refused(
            Some(&session(Some(1), 10)),
            Some(&family(Some(1))),
            Some(&live)
        ));
        // A disabled or deleted user's sessions do not refresh.
        assert!(refused(
            Some(&session(None, 10)),
            Some(&family(None)),
            Some(&user(Some(3)))
        ));
        assert!(refused(Some(&session(None, 10)), Some(&family(None)), None));
    }

    #[test]
    fn a_family_is_revoked_once_and_only_by_its_user() {
        let (revoked, who) = plan_revocation(Some(&session(None, 10)), Some(&family(None)), 7)
            .expect("a live family is revoked");
        assert_eq!(revoked.revoked_at, Some(7));
        assert_eq!(who, ("usr_1".to_owned(), "ses_1".to_owned()));
        assert!(plan_revocation(Some(&session(None, 10)), Some(&revoked), 8).is_none());
        assert!(plan_revocation(None, Some(&family(None)), 8).is_none());
        assert!(revoke_family(&family(None), "usr_2", 8).is_none());
        assert!(revoke_family(&family(None), "usr_1", 8).is_some());
    }

    #[test]
    fn a_family_is_live_until_revoked_or_expired() {
        assert!(is_live(&family(None), 10));
        assert!(!is_live(&family(None), 11));
        assert!(!is_live(&family(Some(1)), 5));
        let legacy = FamilyRecord {
            expires_at: None,
            ..family(None)
        };
        assert!(is_live(&legacy, i64::MAX));
    }

    #[test]
    fn a_disabled_user_neither_logs_in_nor_keeps_sessions() {
        assert!(check_may_log_in(&user(None)).is_ok());
        assert!(matches!(
            check_may_log_in(&user(Some(1))),
            Err(StoreError::Disabled)
        ));
        assert!(may_hold_sessions(Some(&user(None))));
        assert!(!may_hold_sessions(Some(&user(Some(1)))));
        assert!(!may_hold_sessions(None));
    }
}
