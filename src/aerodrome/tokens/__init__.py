"""Capability tokens: biscuit (Ed25519) tokens scoped to orgs, apps, machines and actions.

`mint` makes them, `attenuate` narrows them offline, `Verifier` checks them with only the
public key and decides every request in one place, with a reason when it says no.
"""
