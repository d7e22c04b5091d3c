"""The interaction vocabulary shared by the data generators and builders.

- `INTERACTIONS`: the interaction verbs of the synthetic data, spelled HICO-DET style as
  stored in a dataset index (``"sit_on"``), each with the phrase its caption uses
  (``"sitting on"``). `cli.research.data.synth` draws these interactions;
  `cli.research.data.builders` uses the same phrases for these verbs in its default
  captions, so real and synthetic datasets caption an interaction alike.
- `CAPTION_TEMPLATE`: the paper's caption template "A person is verbing the object"
  (§4.2), lower case like the synthetic data and the shipped word tokenizer.

Which object categories the synthetic renderer draws, and which verbs each takes part
in, belong to the renderer (`cli.research.data.synth.COMPATIBLE`). IAMG-R's lexicon
(`pipelines.retrieval.encoders`) is a different thing: the surface forms of words
("rides", "rode", "bike") mapped to lemmas for matching free-text captions.
"""
from __future__ import annotations

# verb (HICO-DET style, stored in the index) -> phrase used in the caption.
INTERACTIONS: dict[str, str] = {
    "hold": "holding", "kick": "kicking", "carry": "carrying", "ride": "riding",
    "sit_on": "sitting on", "throw": "throwing", "push": "pushing", "swing": "swinging",
    "fly": "flying",
}

# The caption of an interaction: ``CAPTION_TEMPLATE.format(phrase="riding", object="bicycle")``
# -> "a person is riding the bicycle".
CAPTION_TEMPLATE = "a person is {phrase} the {object}"
