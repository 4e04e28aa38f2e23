"""The bundled offline acceptance policies (``limits`` per lane, ``hub_limits`` store-wide, each with its
refusals) and forwarding policy (``backoff``)."""

__all__ = ["backoff", "hub_limits", "limits"]
