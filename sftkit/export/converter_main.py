"""Run as a script (never imported by sftkit): llama.cpp's own convert_hf_to_gguf.py, plus sftkit's two additions.

`python converter_main.py LLAMA_CPP_DIR SETTINGS.json -- CONVERTER ARGS...`, started by sftkit.export.convert
with LLAMA_CPP_DIR's gguf-py first on the path (the gguf library of the same llama.cpp, not whatever gguf
the environment has). The converter does the architecture: hyper-parameters, tensor names and layouts,
the vocabulary. sftkit adds, through a subclass of the model class the converter picked (its own
extension point: every architecture is a ModelBase subclass):

- the trained chat template and the token that ends a reply (tokenizer.chat_template and
  tokenizer.ggml.eot_token_id), written over what the converter found, since the run's template is the one
  the model learned;
- a vocabulary for tokenizers the converter cannot read: a run folder holds tokenizer.json only (no
  SentencePiece tokenizer.model, which the converter's ERNIE and Gemma classes require), and a byte-level
  BPE tokenizer whose pre-tokenizer llama.cpp does not know by hash. Then sftkit's vocab.py writes it from
  tokenizer.json, and the export check (verify.py) proves it tokenizes as transformers does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    llama_cpp_dir, settings_file = Path(sys.argv[1]), Path(sys.argv[2])
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    sys.path[:0] = [str(llama_cpp_dir / "gguf-py"), str(llama_cpp_dir)]
    import convert_hf_to_gguf

    pick = convert_hf_to_gguf.get_model_class

    def get_model_class(*args: Any, **kwargs: Any) -> type:
        return with_sftkit_metadata(pick(*args, **kwargs), settings)

    convert_hf_to_gguf.get_model_class = get_model_class
    sys.argv = [str(llama_cpp_dir / "convert_hf_to_gguf.py"), *sys.argv[sys.argv.index("--") + 1 :]]
    convert_hf_to_gguf.main()


def with_sftkit_metadata(base: type, settings: dict[str, Any]) -> type:
    """`base` whose vocabulary step falls back to sftkit's and ends with the trained template and end-of-turn id."""

    class Exported(base):  # type: ignore[misc, valid-type]
        model_arch = base.model_arch  # the converter requires each subclass to name its architecture

        def set_vocab(self) -> None:
            try:
                super().set_vocab()
                print("sftkit: vocabulary written by llama.cpp's converter", file=sys.stderr)
            except (FileNotFoundError, NotImplementedError) as exc:  # the two ways it says "not this tokenizer"
                print(
                    f"sftkit: llama.cpp's converter cannot read this tokenizer ({exc}); sftkit writes the "
                    "vocabulary from tokenizer.json",
                    file=sys.stderr,
                )
                _sftkit_vocab(self.gguf_writer, Path(self.dir_model), int(self.hparams["vocab_size"]))
            _replace(self.gguf_writer, "tokenizer.chat_template", lambda w: w.add_chat_template(settings["template"]))
            if settings.get("eot_id") is not None:
                _replace(
                    self.gguf_writer, "tokenizer.ggml.eot_token_id", lambda w: w.add_eot_token_id(settings["eot_id"])
                )

    Exported.__name__ = base.__name__
    return Exported


def _sftkit_vocab(writer: Any, folder: Path, n_vocab: int) -> None:
    from transformers import AutoTokenizer

    from sftkit.export.vocab import add_special_vocab, build_vocab, write_vocab

    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = build_vocab(tokenizer, n_vocab)
    write_vocab(writer, vocab)
    add_special_vocab(writer, tokenizer, vocab, eot_id=None)


def _replace(writer: Any, key: str, add: Any) -> None:
    """Sets `key`, dropping the converter's value first (GGUFWriter refuses a key twice)."""
    for shard in writer.kv_data:
        shard.pop(key, None)
    add(writer)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # sftkit's own one-line errors (SftkitError) reach the parent as they are
        if type(exc).__module__.startswith("sftkit."):
            print(f"sftkit-error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
