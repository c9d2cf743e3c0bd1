"""The ai supervisor's inputs refuse the embedding tier the same way wherever a caller picks a tier."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from caelum_mcp.core.types import Tier
from caelum_mcp.supervisors.ai import DelegateTaskInput
from caelum_mcp.supervisors.ai_batch import RunBatchInput


@pytest.mark.parametrize(
    "make",
    [
        lambda tier: DelegateTaskInput(prompt="hi", tier=tier),
        lambda tier: RunBatchInput(template="{{ item }}", items=["a"], tier=tier),
    ],
    ids=["delegate_task", "run_batch"],
)
def test_an_embedding_tier_is_refused_with_the_tiers_that_chat(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match="embedding models do not chat; use micro, small, full, large or code"):
        make(Tier.EMBEDDING)
    assert make(Tier.SMALL).tier is Tier.SMALL
    assert make(None).tier is None
