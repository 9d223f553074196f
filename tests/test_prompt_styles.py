"""Prompt styles: every style of a prompt states the same claim, paraphrases are phrasings no caption or training
prompt used, and the paired change of a configuration against base per style is what the hand-made numbers give."""

import numpy as np
import pytest

from texforce.errors import TexforceError
from texforce.observe.evaluation import paired_changes
from texforce.prompts import PROMPT_SETS
from texforce.prompts.styles import STYLES, get_style, paraphrase, styled
from texforce.world.pool import WEB_MIX, web_caption
from texforce.world.scenes import (
    PARAPHRASE_PREFIXES,
    PARAPHRASE_SUFFIXES,
    PRETRAIN_MIX,
    family_prompts,
    parse_prompt,
    sample_spec,
)

WORLD_SETS = [name for name in PROMPT_SETS if name.startswith("world")]


def world_prompts() -> list[str]:
    prompts = {
        p for name in WORLD_SETS for part in (PROMPT_SETS[name]().train, PROMPT_SETS[name]().eval) for p in part
    }
    return sorted(prompts)


def test_every_style_states_the_same_claim():
    prompts = world_prompts()
    assert len(prompts) > 200
    for style in STYLES.values():
        texts = styled(prompts, style)
        assert [parse_prompt(t) for t in texts] == [parse_prompt(p) for p in prompts], style.name
        if style.name != "plain":
            assert sum(t != p for t, p in zip(texts, prompts, strict=True)) > 0.9 * len(prompts), style.name


def test_paraphrases_are_phrasings_never_used_in_pretraining_or_training():
    wrappers = [w.strip() for w in (*PARAPHRASE_PREFIXES, *PARAPHRASE_SUFFIXES)]
    rng = np.random.default_rng(0)
    families = list(PRETRAIN_MIX)
    captions = [web_caption(sample_spec(rng, families[i % len(families)]), WEB_MIX.quality.sample(rng), rng,
                            WEB_MIX.captions)[0] for i in range(3000)]  # fmt: skip
    for text in captions + world_prompts():
        assert not any(w in text for w in wrappers), text
    heldout = family_prompts("relation", "heldout", 16)
    assert all(any(w in paraphrase(p) for w in wrappers) for p in heldout)
    used = {next(w for w in PARAPHRASE_PREFIXES if paraphrase(p).startswith(w)) for p in world_prompts()}
    assert len(used) == len(PARAPHRASE_PREFIXES), "the wrapper varies with the prompt"


def test_styles_outside_the_world_and_templates():
    assert STYLES["engineered"].apply("A photo of a cat") == "A photo of a cat"  # not the world's language
    template = get_style("{prompt}, highly detailed")
    assert template.apply("a cat") == "a cat, highly detailed"
    with pytest.raises(TexforceError, match="unknown prompt style 'fancy'"):
        get_style("fancy")


def test_paired_change_per_style_on_hand_made_numbers():
    rows = []
    base = {("p1", 0): 0.2, ("p1", 1): 0.4, ("p2", 0): 0.5, ("p2", 1): 0.1}
    shift = {"plain": {"p1": 0.3, "p2": 0.1}, "engineered": {"p1": -0.1, "p2": -0.3}}
    for style, by_prompt in shift.items():
        for (prompt, seed), score in base.items():
            rows.append(
                {"config": "base", "style": style, "prompt": prompt, "seed": seed, "reward": "r", "score": score}
            )
            rows.append({"config": "text", "style": style, "prompt": prompt, "seed": seed, "reward": "r",
                         "score": score + by_prompt[prompt]})  # fmt: skip
    changes = {c.style: c for c in paired_changes(rows)}
    assert changes["plain"].mean == pytest.approx(0.2) and changes["engineered"].mean == pytest.approx(-0.2)
    # two prompts' changes 0.3 and 0.1: sd 0.1414, t(1) = 12.706 → ± 12.706 · 0.1414 / √2 = 1.2706
    assert changes["plain"].ci == pytest.approx(12.706 * 0.1, rel=1e-3)
    assert changes["plain"].n_prompts == 2
