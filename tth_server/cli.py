"""`tth-server`: run the TTH gRPC service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from adapters.errors import ConfigError
from tth_server.config import list_profiles, load_config
from tth_server.logs import configure
from tth_server.server import run_until_signalled
from tth_server.workers import WorkerError, run_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tth-server", description="Run the TTH gRPC service.")
    parser.add_argument("--listen", help="HOST:PORT to listen on (default: server.listen, 127.0.0.1:50051)")
    parser.add_argument(
        "--profile",
        help=f"configuration profile (default: TTH_PROFILE or base.yaml's); one of {', '.join(list_profiles())}",
    )
    parser.add_argument("--config-dir", type=Path, help="configuration folder (default: the repo's config/)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the address, one per core to use (default: server.workers, 1)",
    )
    args = parser.parse_args(argv)
    try:
        overrides = {"server": {"workers": args.workers}} if args.workers is not None else None
        config = load_config(args.profile, config_dir=args.config_dir, overrides=overrides)
        configure(config.log)
        if config.server.workers > 1:
            return run_workers(config, args.listen)
        asyncio.run(run_until_signalled(config, args.listen))
    except ConfigError as exc:
        print(f"tth-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"tth-server: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"tth-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
