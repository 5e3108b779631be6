"""`foundry submit` and `foundry jobs`: Ray jobs on a running cluster."""

from __future__ import annotations

import argparse

from modelfoundry.cli.table import Command


def _submit_args(sb: argparse.ArgumentParser) -> None:
    sb.add_argument("kind", choices=["train", "tune", "compress"])
    sb.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")
    sb.add_argument("--working-dir", help="the project root to upload (default: this installation's)")
    sb.add_argument("--no-follow", action="store_true", help="print the job id and return")
    sb.add_argument(
        "--dry-run", action="store_true", help="list the files the upload would carry (secrets excluded) and stop"
    )


def cmd_submit(args: argparse.Namespace, rest: list[str]) -> int:
    from modelfoundry.submit import follow, project_root, submit, upload_listing

    if args.dry_run:
        files = upload_listing(project_root(args.kind, args.working_dir))
        for path, size in files:
            print(f"{size:>12,}  {path}")
        print(f"{len(files)} files, {sum(s for _, s in files):,} bytes would be uploaded (nothing was sent)")
        return 0
    job_id = submit(args.address, args.kind, rest, args.working_dir)
    print(f"submitted job {job_id} to {args.address}", flush=True)
    if args.no_follow:
        return 0
    status = follow(args.address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs_args(j: argparse.ArgumentParser) -> None:
    j.add_argument("action", choices=["list", "logs", "stop"])
    j.add_argument("job_id", nargs="?")
    j.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")


def cmd_jobs(args: argparse.Namespace) -> int:
    from modelfoundry.submit import client

    c = client(args.address)
    if args.action == "list":
        for job in c.list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status.value:9}  {job.entrypoint}")
        return 0
    if not args.job_id:
        raise ValueError(f"foundry jobs {args.action} needs a job id (see foundry jobs list)")
    if args.action == "logs":
        print(c.get_job_logs(args.job_id))
    else:
        print(f"stop requested: {c.stop_job(args.job_id)}")
    return 0


COMMANDS = [
    Command(
        "submit",
        "submit train/tune as a Ray job to a running cluster and follow it",
        "Submit `foundry train`, `tune` or `compress` as a Ray job to a running cluster (the "
        "project uploaded as its working dir) and follow its logs.",
        "foundry submit train --address http://HEAD:8265 --config jobs/configs/cnn_digits.yaml --workers 2",
        _submit_args,
        cmd_submit,
        passes_rest=True,
    ),
    Command(
        "jobs",
        "list, show logs of, or stop Ray jobs",
        "List the Ray jobs of a cluster, show one's logs, or stop one.",
        "foundry jobs logs raysubmit_XXXX --address http://HEAD:8265",
        _jobs_args,
        cmd_jobs,
    ),
]
