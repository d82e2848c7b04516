"""Signed model bundles: files + model card + lineage + a sha256 manifest signed with Ed25519."""
