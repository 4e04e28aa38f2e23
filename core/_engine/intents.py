"""Build the app-facing PaymentIntent from what the store holds."""

from __future__ import annotations

from ..contracts import CardDetails, PaymentState, StoredPayment
from ..models import CaptureMethod, CardPresentDetails, IntentStatus, OfflineDetails, PaymentIntent


def card_present_details(details: CardDetails | None) -> CardPresentDetails | None:
    if details is None:
        return None
    return CardPresentDetails(
        brand=details.brand,
        last4=details.last4,
        exp_month=details.exp_month,
        exp_year=details.exp_year,
        read_method=details.read_method,
        cardholder_name=details.cardholder_name,
    )


def _status(payment: StoredPayment) -> IntentStatus:
    if payment.state is PaymentState.DECLINED:
        return IntentStatus.REQUIRES_PAYMENT_METHOD
    if payment.capture_method is CaptureMethod.MANUAL:
        return IntentStatus.REQUIRES_CAPTURE
    return IntentStatus.SUCCEEDED


def intent_from_stored(payment: StoredPayment) -> PaymentIntent:
    """``requires_upload`` stays True until the processor has the payment (authorised or declined)."""
    return PaymentIntent(
        offline_id=payment.offline_id,
        id=payment.intent_id,
        amount=payment.amount,
        currency=payment.currency,
        status=_status(payment),
        capture_method=payment.capture_method,
        metadata=dict(payment.metadata),
        description=payment.description,
        offline_details=OfflineDetails(
            stored_at=payment.stored_at,
            requires_upload=payment.state not in (PaymentState.FORWARDED, PaymentState.DECLINED),
            card_present_details=card_present_details(payment.card_details),
        ),
    )
