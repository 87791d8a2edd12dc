"""The platform's rules over the store: users, orgs, members, apps, token records.

Functions here take a `Tx` for writes (and write their audit event and change-feed entry
in it) or a `Session` for reads. They validate input and raise `AeroError`s; they never
decide authorization, which is `aerodrome.api.authz`'s job alone.
"""
