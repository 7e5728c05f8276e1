"""`EmbeddedReferencesPlugin`: `proofkd:` references in a recipe that trains without distillation.

A recipe that does not use the KD plugin (Stage 2's legal SFT, say) can still
name embedded models and data (`proofkd:smollm2-135m-instruct`,
`proofkd:legal-sample?split=train`) by listing this plugin; it resolves them
to cached paths before Axolotl validates the config, as `ProofKDPlugin` does,
and its run logs every record to `proofkd_log.jsonl` as the distillation
plugins' runs do.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from proofkd.core import embedded
from proofkd.core.logs import enable_console_logging


def resolve_embedded_references(cfg) -> None:
    """Replace every `proofkd:` reference in the model and dataset keys with its cached path."""
    for key in ("base_model", "base_model_config", "tokenizer_config", "proofkd_teacher"):
        if embedded.is_reference(cfg.get(key)):
            cfg[key] = str(embedded.resolve(cfg[key]))
    for list_key in ("datasets", "test_datasets"):
        for dataset in cfg.get(list_key) or []:
            if embedded.is_reference(dataset.get("path")):
                dataset["path"] = str(embedded.resolve(dataset["path"]))
                dataset.setdefault("ds_type", "json")


class EmbeddedReferencesPlugin(BasePlugin):
    """Resolves `proofkd:` references and logs to `proofkd_log.jsonl`; changes nothing else about training."""

    def register(self, cfg):
        enable_console_logging()
        resolve_embedded_references(cfg)

    def add_callbacks_post_trainer(self, cfg, trainer):
        from proofkd.plugin.trainer import JsonlLogCallback  # the trainer module loads Axolotl's trainers

        return [JsonlLogCallback()]
