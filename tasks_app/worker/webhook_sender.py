"""Sending one webhook delivery: claim it, check the URL again, sign, POST, record."""

from __future__ import annotations

import json

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from .. import webhooks
from ..conf import app_settings
from ..services import webhooks as webhook_state


def send(delivery_id: int) -> str:
    """One attempt at one delivery; returns its status afterwards, or "skipped"."""
    delivery = webhook_state.webhook_claim(delivery_id=delivery_id)
    if delivery is None:
        return "skipped"  # not due, or another sender has it
    started_at = timezone.now()
    body = json.dumps(delivery.payload, cls=DjangoJSONEncoder, separators=(",", ":")).encode()
    try:
        # Checked again now, and the request goes to exactly the address checked here.
        target = webhooks.check_url(delivery.url)
    except webhooks.UnsafeURL as exc:
        outcome = webhooks.Outcome(None, 0, error=f"Refused: {exc}")
    else:
        secrets_ = [s.secret for s in webhook_state.signing_secrets(owner=delivery.job.owner)]
        headers = webhooks.signature_headers(secrets_, delivery.webhook_id, int(started_at.timestamp()), body)
        outcome = webhooks.post(target, body, headers, timeout=app_settings.WEBHOOK_TIMEOUT)
    return webhook_state.webhook_record_attempt(
        delivery=delivery, outcome=outcome, started_at=started_at
    ).status
