"""``python -m llm_core.training --data shakespeare --tokenizer char --preset nano --out DIR``: pretrain a small GPT
(flags in :mod:`llm_core.training.train`)."""

from llm_core.training.train import cli

if __name__ == "__main__":
    cli()
