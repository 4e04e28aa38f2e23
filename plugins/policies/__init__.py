"""The bundled offline acceptance policy (``limits``, with its refusals) and forwarding policy (``backoff``)."""

__all__ = ["backoff", "limits"]
