"""``montessori artifacts {ls,lineage,gc}``: inspect and prune the artifact store."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> None:
    sub = commands.add_parser("artifacts", help="List loops' artifacts, show lineage, collect garbage.")
    sub.add_argument(
        "--store", default=None, help="artifact store (path, file:// or s3://bucket; default MONTESSORI_ARTIFACTS_DIR)"
    )
    actions = sub.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", help="the stages of a loop (or all loops) with their outputs")
    ls.add_argument("loop_id", nargs="?")
    lineage = actions.add_parser("lineage", help="the provenance tree of an artifact URI")
    lineage.add_argument("uri")
    gc = actions.add_parser("gc", help="remove what no kept loop references (dry run unless --delete)")
    gc.add_argument(
        "--keep",
        action="append",
        default=None,
        metavar="LOOP_ID",
        help="loops to keep (default: all); a loop that has not ended is always kept whole",
    )
    gc.add_argument("--delete", action="store_true", help="really delete (default: only print)")


def run(args: argparse.Namespace) -> int:
    from common import lineage
    from common.artifacts import open_store
    from common.envs import Env

    store = open_store(args.store or Env.read().artifacts_dir)
    if args.action == "ls":
        if not args.loop_id:
            for loop_id in lineage.loop_ids(store):
                print(loop_id)
            return 0
        stages = lineage.manifests(store, f"loops/{args.loop_id}")
        if not stages:
            from common.errors import NotFound

            raise NotFound(f"no loop {args.loop_id!r} in {store.root_uri}", field="loop_id")
        for prefix, manifest in sorted(stages.items()):
            outputs = ", ".join(f"{role}={ref['sha256'][:12]}" for role, ref in manifest["outputs"].items())
            print(f"{prefix.removeprefix('loops/' + args.loop_id + '/'):<34} {manifest['stage']:<14} {outputs}")
        return 0
    if args.action == "lineage":
        print("\n".join(lineage.lineage(store, args.uri).render()))
        return 0
    doomed = lineage.garbage(store, args.keep)
    for key in doomed:
        print(("delete " if args.delete else "would delete ") + store.uri(key))
    if args.delete:
        for key in doomed:
            store.delete(key)
    print(json.dumps({"objects": len(doomed), "deleted": bool(args.delete)}))
    return 0
