"""What a finished request leaves for adaptation: an ``Observation`` built from its ``Prediction`` (gateway and eval).

It keeps the numeric features and, when ``keep_text_slots`` (the gateway's ``classifier_text_slots``
setting), the hashed uni/bigram slots of the last user message's first 256 token ids, never the text.
What the slots give away: a slot is ``(token id * A) mod 65536`` (or the same of a token pair), so
anyone holding them and the tokenizer can list the few tokens that map to each slot and, with the
bigrams, guess which words the prompt used (a bag of words, without their order beyond pairs); they
do not give the text back. With the setting off, adaptation learns from the features alone.
"""

from __future__ import annotations

from wattgate.classifier.api import Prediction
from wattgate.planner.contract import OBSERVATION_REVISION, Observation, encode_slots


def observation(
    pred: Prediction,
    *,
    keep_text_slots: bool,
    request_id: str,
    pool: str,
    predicted_type: str,
    input_tokens: int,
    output_tokens: int,
    ttft_s: float | None,
    tbt_s: float | None,
    status: int,
    instance: str,
    model: str,
    ts: float,
    max_tokens: int | None = None,
) -> Observation:
    keep = keep_text_slots and bool(pred.text_slots) and 0 < pred.text_dim <= 1 << 16
    return Observation(
        request_id=request_id,
        pool=pool,
        predicted_type=predicted_type,
        output_probs=list(pred.output_probs),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_s=ttft_s,
        tbt_s=tbt_s,
        status=status,
        instance=instance,
        model=model,
        ts=ts,
        features=dict(pred.features),
        max_tokens=max_tokens,
        text_slots=encode_slots(pred.text_slots) if keep else "",
        text_dim=pred.text_dim if keep else 0,
        revision=OBSERVATION_REVISION,
    )
