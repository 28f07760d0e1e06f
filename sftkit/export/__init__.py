"""The export stage: a trained model as a GGUF file for llama.cpp, or as an Ollama model, verified.

Modules: `recipe` (export(): the steps and the output rules), `convert` (llama.cpp's convert_hf_to_gguf.py
and quantizer, run on the model), `converter_main` (the converter's subprocess, with the trained template),
`vocab` (the tokenizer in llama.cpp's terms, for tokenizers the converter cannot read), `ollama` (the
Modelfile) and `verify` (llama.cpp loads the file and must compute what transformers computes).
"""

from sftkit.export.convert import OUTTYPES
from sftkit.export.recipe import FORMATS, export

__all__ = ["FORMATS", "OUTTYPES", "export"]
