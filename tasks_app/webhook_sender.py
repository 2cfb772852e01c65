"""Sending one webhook delivery: claim it, check the URL again, sign, POST, record."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from . import services, webhooks


def send(delivery_id: Any) -> str:
    delivery = services.webhook_claim(delivery_id)
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
        secrets_ = [s.secret for s in services.signing_secrets(delivery.job.owner)]
        headers = webhooks.signature_headers(secrets_, delivery.webhook_id, int(started_at.timestamp()), body)
        outcome = webhooks.post(target, body, headers, timeout=settings.LONGRUN["WEBHOOK_TIMEOUT"])
    return services.webhook_record_attempt(delivery, outcome, started_at=started_at).status
