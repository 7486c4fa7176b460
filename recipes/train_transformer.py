"""Train a GPT-style TransformerAR on text, or generate from a trained one.

    python recipes/train_transformer.py --max-steps 2000                  # the stdlib's own source
    python recipes/train_transformer.py --text-files ../shared/data/tinyshakespeare/input.txt \\
        --tokenizer char --max-steps 5000 --out runs/shakespeare
    python recipes/train_transformer.py --hf-dataset path/or/name --hf-column text --tokenizer bpe
    python recipes/train_transformer.py --max-steps 4000 --resume last    # continue a run
    python recipes/train_transformer.py --generate --out runs --prompt "def main(" \\
        --temperature 0.8 --top-p 0.9 --n-samples 4 --max-length 128     # sample from the last checkpoint

Training windows start with BOS. The run directory (--out) receives TensorBoard logs,
checkpoints, the tokenizer (tokenizer.json) and the model config (model_config.json),
which is what --generate reads back.
"""

from __future__ import annotations

import argparse
import os
import sys

from flax import nnx

from artrainer.callbacks import SampleGenerator
from artrainer.checkpointing import load_weights
from artrainer.cli import (add_trainer_arguments, check_flag, check_sampling_flags, check_trainer_arguments,
                           fit_and_report, read_run_config, start_processes, train_and_val_loaders,
                           write_run_config)
from artrainer.data.text import (BPETokenizer, ByteTokenizer, CharTokenizer, load_text_dataset,
                                 read_text_files, stdlib_corpus, token_windows)
from artrainer.models import TransformerAR

TOKENIZERS = {"byte": ByteTokenizer, "char": CharTokenizer, "bpe": BPETokenizer}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--text-files", nargs="+", default=None, help="train on these text files")
    data.add_argument("--hf-dataset", default=None, help="a Hugging Face dataset: saved dir, .txt path or hub name")
    data.add_argument("--hf-split", default="train")
    data.add_argument("--hf-column", default="text")
    data.add_argument("--corpus-bytes", type=int, default=4_000_000, help="size of the default stdlib corpus")
    data.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="byte")
    data.add_argument("--bpe-vocab", type=int, default=1024, help="vocabulary size of a trained BPE tokenizer")
    data.add_argument("--val-fraction", type=float, default=0.1)
    data.add_argument("--batch-size", type=int, default=32)
    model = parser.add_argument_group("model")
    model.add_argument("--seq-len", type=int, default=128)
    model.add_argument("--hidden-dim", type=int, default=128)
    model.add_argument("--num-layers", type=int, default=4)
    model.add_argument("--num-heads", type=int, default=4)
    model.add_argument("--dropout", type=float, default=0.0)
    model.add_argument("--rotary", action="store_true", help="rotary instead of learned positions")
    sampling = parser.add_argument_group("sampling (--generate, and periodic samples while training)")
    sampling.add_argument("--generate", action="store_true", help="sample from a checkpoint instead of training")
    sampling.add_argument("--checkpoint", default=None, help="checkpoint dir for --generate (default: <out>/checkpoints)")
    sampling.add_argument("--prompt", default=None, help="text to continue")
    sampling.add_argument("--n-samples", type=int, default=4)
    sampling.add_argument("--max-length", type=int, default=None, help="tokens per sample, prompt included")
    sampling.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sampling.add_argument("--top-k", type=int, default=None)
    sampling.add_argument("--top-p", type=float, default=None)
    sampling.add_argument("--repetition-penalty", type=float, default=1.0)
    sampling.add_argument("--stop-at-eos", action="store_true", help="end samples at the tokenizer's EOS")
    sampling.add_argument("--beam-size", type=int, default=None, help="beam search instead of sampling")
    sampling.add_argument("--length-penalty", type=float, default=1.0)
    sampling.add_argument("--no-cache", action="store_true", help="recompute the prefix every step (slow)")
    sampling.add_argument("--sample-every", type=int, default=None, help="log samples every N training steps")
    add_trainer_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_steps is None and args.max_epochs is None:
        args.max_steps = 2000
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction {args.val_fraction} must lie in (0, 1)")
    check_trainer_arguments(args)
    check_sampling_flags(args)
    check_flag(args, "corpus_bytes", "an int >= 0", lambda n: n >= 0)
    check_flag(args, "beam_size", "an int >= 1 (leave --beam-size out to sample)", lambda n: n >= 1)
    if args.generate:  # The model checks the upper bound, its sequence length.
        check_flag(args, "max_length", "an int >= 2", lambda n: n >= 2)
    else:
        check_flag(args, "max_length", f"an int in [2, --seq-len={args.seq_len}]",
                   lambda n: 2 <= n <= args.seq_len)
    return args


def load_text(args) -> str:
    if args.text_files:
        return read_text_files(args.text_files)
    if args.hf_dataset:
        return "\n".join(load_text_dataset(args.hf_dataset, split=args.hf_split, column=args.hf_column))
    return stdlib_corpus(args.corpus_bytes)


def make_tokenizer(args, text: str):
    if args.tokenizer == "char":
        return CharTokenizer.fit(text)
    if args.tokenizer == "bpe":
        return BPETokenizer.train([text], args.bpe_vocab)
    return ByteTokenizer()


def build_model(config: dict, seed: int) -> TransformerAR:
    return TransformerAR(config["vocab_size"], config["sequence_length"], config["hidden_dim"],
                         config["num_layers"], config["num_heads"], dropout_rate=config["dropout_rate"],
                         position_encoding=config["position_encoding"], pad_token_id=config["pad_token_id"],
                         bos_token_id=config["bos_token_id"], rngs=nnx.Rngs(seed))


def sampling_kwargs(args, tokenizer) -> dict:
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  repetition_penalty=args.repetition_penalty)
    if args.stop_at_eos:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    return kwargs


def train(args) -> int:
    text = load_text(args)
    tokenizer = make_tokenizer(args, text)
    windows = token_windows(tokenizer.encode(text), args.seq_len, bos_token_id=tokenizer.bos_token_id)
    n_val = max(1, int(len(windows) * args.val_fraction))
    train_windows, val_windows = windows[:-n_val], windows[-n_val:]
    print(f"{len(train_windows)} training and {len(val_windows)} validation windows of {args.seq_len} "
          f"{args.tokenizer} tokens", file=sys.stderr)
    train_data, val_data = train_and_val_loaders(args, {"sequences": train_windows}, {"sequences": val_windows})

    config = {"tokenizer": args.tokenizer, "vocab_size": tokenizer.vocab_size, "sequence_length": args.seq_len,
              "hidden_dim": args.hidden_dim, "num_layers": args.num_layers, "num_heads": args.num_heads,
              "dropout_rate": args.dropout, "position_encoding": "rotary" if args.rotary else "learned",
              "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    write_run_config(args.out, config)
    tokenizer.save(os.path.join(args.out, "tokenizer.json"))
    model = build_model(config, args.seed)
    model.tokenizer = tokenizer  # log_samples decodes with it
    extra = []
    if args.sample_every:
        extra.append(SampleGenerator(args.sample_every, args.n_samples, quality_metrics=True,
                                     generate_kwargs={"max_length": args.max_length or args.seq_len,
                                                      **sampling_kwargs(args, tokenizer)}))
    return fit_and_report(args, model, train_data, val_data, extra)


def generate(args) -> int:
    config = read_run_config(args.out)
    tokenizer = TOKENIZERS[config["tokenizer"]].load(os.path.join(args.out, "tokenizer.json"))
    model = build_model(config, args.seed)
    step = load_weights(model, args.checkpoint or os.path.join(args.out, "checkpoints"))
    prompt = [tokenizer.bos_token_id] + (tokenizer.encode(args.prompt) if args.prompt else [])
    rngs = nnx.Rngs(sample=args.seed)
    if args.beam_size is not None:
        sequences, scores = model.beam_search(args.beam_size, args.max_length, prompt=prompt,
                                              length_penalty=args.length_penalty,
                                              eos_token_id=tokenizer.eos_token_id if args.stop_at_eos else None)
        labels = [f"score {float(s):.3f}" for s in scores]
    else:
        sequences = model.generate(args.n_samples, args.max_length, prompt=prompt, rngs=rngs,
                                   use_cache=not args.no_cache, **sampling_kwargs(args, tokenizer))
        labels = [f"sample {i}" for i in range(len(sequences))]
    print(f"# checkpoint step {step}", file=sys.stderr)
    for label, row in zip(labels, sequences.tolist()):
        print(f"--- {label}\n{tokenizer.decode(row)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    start_processes(args)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    sys.exit(main())
