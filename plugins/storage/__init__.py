"""Storage backends (``sqlcipher``, ``memory``), storage-key providers (``keys``) and the hub
replicator (``postgres``)."""

__all__ = ["keys", "memory", "postgres", "sqlcipher"]
