#!/bin/bash
uv run python "$(dirname "$0")/gpu.py" "$@"
