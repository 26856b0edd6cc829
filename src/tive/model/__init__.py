"""Vision-language models: the built-in tiny model, loading checkpoints, LoRA, encoding records, warm-up."""

import warnings

# transformers/peft chatter that says nothing to a tive user: per-call progress bars and deprecations they
# trigger in each other. Errors and real warnings still show.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def quiet_transformers() -> None:
    """Turn off transformers' weight-loading progress bars and info logs (tive shows its own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
