"""Reader transports (``simulated``, ``serial``, ``ble``) and the reader wire codecs they share with
``offterm.sim``: ``protocol`` and ``card_encryption``; ``test_cards`` is the test-card catalogue."""

__all__ = ["ble", "card_encryption", "protocol", "serial", "simulated", "test_cards"]
