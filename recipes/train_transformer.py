"""Train a GPT-style TransformerAR on text: the stdlib's own source by default.

    python recipes/train_transformer.py --max-steps 2000
    python recipes/train_transformer.py --text-files ../shared/data/tinyshakespeare/input.txt --max-steps 5000
    python recipes/train_transformer.py --hf-dataset some/dataset --hf-column text --max-steps 5000
    python recipes/train_transformer.py --max-steps 4000 --resume last      # continue a run

Bytes are the tokens (vocabulary 259: 256 bytes + BOS/EOS/PAD); each training window
starts with BOS. TensorBoard logs and checkpoints go under --out (default runs/).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from flax import nnx

from artrainer.cli import add_trainer_arguments, build_trainer
from artrainer.data import DataLoader
from artrainer.data.text import ByteTokenizer, read_text_files, stdlib_corpus, token_windows
from artrainer.models import TransformerAR


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--text-files", nargs="+", default=None, help="train on these text files")
    data.add_argument("--hf-dataset", default=None, help="a Hugging Face dataset name or local path")
    data.add_argument("--hf-split", default="train")
    data.add_argument("--hf-column", default="text")
    data.add_argument("--corpus-bytes", type=int, default=4_000_000, help="size of the default stdlib corpus")
    data.add_argument("--val-fraction", type=float, default=0.1)
    data.add_argument("--batch-size", type=int, default=32)
    model = parser.add_argument_group("model")
    model.add_argument("--seq-len", type=int, default=128)
    model.add_argument("--hidden-dim", type=int, default=128)
    model.add_argument("--num-layers", type=int, default=4)
    model.add_argument("--num-heads", type=int, default=4)
    model.add_argument("--dropout", type=float, default=0.0)
    model.add_argument("--rotary", action="store_true", help="rotary instead of learned positions")
    add_trainer_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_steps is None and args.max_epochs is None:
        args.max_steps = 2000
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction {args.val_fraction} must lie in (0, 1)")
    return args


def load_text(args) -> str:
    if args.text_files:
        return read_text_files(args.text_files)
    if args.hf_dataset:
        import datasets
        table = datasets.load_dataset(args.hf_dataset, split=args.hf_split)
        if args.hf_column not in table.column_names:
            raise ValueError(f"--hf-column {args.hf_column!r} is not a column of {args.hf_dataset}; "
                             f"it has {table.column_names}")
        return "\n".join(table[args.hf_column])
    return stdlib_corpus(args.corpus_bytes)


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = ByteTokenizer()
    windows = token_windows(tokenizer.encode(load_text(args)), args.seq_len,
                            bos_token_id=tokenizer.bos_token_id)
    n_val = max(1, int(len(windows) * args.val_fraction))
    train_windows, val_windows = windows[:-n_val], windows[-n_val:]
    print(f"{len(train_windows)} training and {len(val_windows)} validation windows of {args.seq_len} tokens",
          file=sys.stderr)
    train = DataLoader({"sequences": train_windows}, args.batch_size, seed=args.seed)
    val = DataLoader({"sequences": val_windows}, args.batch_size, shuffle=False, last_batch="pad")

    model = TransformerAR(tokenizer.vocab_size, args.seq_len, args.hidden_dim, args.num_layers, args.num_heads,
                          dropout_rate=args.dropout, position_encoding="rotary" if args.rotary else "learned",
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          rngs=nnx.Rngs(args.seed))
    if args.lr is not None:
        model.learning_rate = args.lr
    trainer = build_trainer(args)
    trainer.fit(model, train, val, ckpt_path=args.resume)
    metrics = trainer.validate(model, val)
    print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
