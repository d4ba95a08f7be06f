"""Does a job's resource request fit its SLURM partition? Checked at submission (slurm/submit.sh, curriculum.sh).

SLURM accepts a job that asks more than any node of its partition has (16 CPUs per task on 8-CPU nodes, 3
nodes in a 2-node partition) and leaves it PENDING forever (Reason=PartitionConfig / PartitionNodeLimit);
a GPU request on a partition without GPUs is refused with "Invalid generic resource". `fit_request`
compares what a job asks -- a job script's `#SBATCH` defaults overlaid with the options given at submission
-- with what the partition offers (`scontrol show partition -o`, `sinfo -N -o '%N %c %G'`):

- a request the user gave that cannot fit is an error that names the option to lower, the value that fits
  and the curriculum.sh variable that sets it;
- a script default that cannot fit is lowered to what fits (CPUs per task, nodes, time, GPUs per node and
  one task per GPU) and reported -- except GPUs on a partition without any: running a GPU job on CPUs is a
  choice the user makes (GPUS_PER_NODE=0 / --gpus-per-node=0).

Pure functions over the commands' text; launch/slurm_fit.py runs the commands.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

# option spellings -> the field they set
_LONG = {
    "--nodes": "nodes",
    "--ntasks-per-node": "ntasks_per_node",
    "--ntasks": "ntasks",
    "--cpus-per-task": "cpus_per_task",
    "--gpus-per-node": "gpus_per_node",
    "--gres": "gres",
    "--time": "time",
    "--partition": "partition",
}
_SHORT = {"-N": "nodes", "-n": "ntasks", "-c": "cpus_per_task", "-t": "time", "-p": "partition"}
# how each field is named to the user: the sbatch option and the curriculum.sh variable
_HOW = {
    "nodes": ("--nodes", "NODES"),
    "ntasks_per_node": ("--ntasks-per-node", "TASKS_PER_NODE"),
    "cpus_per_task": ("--cpus-per-task", "CPUS_PER_TASK"),
    "gpus_per_node": ("--gpus-per-node", "GPUS_PER_NODE"),
    "time": ("--time", "TIME"),
}


class ResourceError(ValueError):
    """The request cannot run on the partition; the message says what to lower."""


@dataclass
class Node:
    name: str
    cpus: int
    gpus: int


@dataclass
class Partition:
    name: str
    state: str = "UP"
    max_nodes: int | None = None  # None: unlimited
    max_time_min: float | None = None
    max_cpus_per_node: int | None = None
    nodes: list[Node] = field(default_factory=list)


def parse_time_min(text: str) -> float | None:
    """SLURM time ("30", "2:00:00", "1-12", "1-00:00:00", "UNLIMITED") in minutes; None for unlimited."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-") if "-" in text else ("", "", text)
    parts = [float(p) for p in rest.split(":")]
    if days:  # D-H, D-H:M, D-H:M:S
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
        return float(days) * 1440 + hours * 60 + minutes + seconds / 60
    if len(parts) == 1:  # M
        return parts[0]
    if len(parts) == 2:  # M:S
        return parts[0] + parts[1] / 60
    hours, minutes, seconds = parts  # H:M:S
    return hours * 60 + minutes + seconds / 60


def _gpus_in_gres(gres: str) -> int:
    """GPUs in a gres string: "gpu:8", "gpu:a100:4(S:0-1)", "gpu:2,shard:4" -> 8, 4, 2; "(null)" -> 0."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        fields = item.strip().split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def parse_sbatch_options(args: list[str]) -> dict[str, str]:
    """The resource options among sbatch arguments ({field: value}); the last one given wins."""
    found, i = {}, 0
    while i < len(args):
        arg = args[i]
        name, sep, value = arg.partition("=")
        if arg.startswith("--") and name in _LONG:
            if not sep:
                i += 1
                value = args[i] if i < len(args) else ""
            found[_LONG[name]] = value
        elif arg[:2] in _SHORT:
            value = arg[2:]
            if not value:
                i += 1
                value = args[i] if i < len(args) else ""
            found[_SHORT[arg[:2]]] = value.lstrip("=")
        i += 1
    if "gres" in found:  # --gres=gpu:N asks N GPUs per node, like --gpus-per-node=N
        found.setdefault("gpus_per_node", str(_gpus_in_gres(found.pop("gres"))))
    return found


def script_defaults(script_text: str) -> dict[str, str]:
    """The resource options of a job script's `#SBATCH` lines (those before its first command)."""
    args = []
    for line in script_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            args += shlex.split(stripped[len("#SBATCH") :], comments=True)
        elif stripped and not stripped.startswith("#"):
            break
    return parse_sbatch_options(args)


def parse_partitions(scontrol_text: str) -> dict[str, dict[str, str]]:
    """`scontrol show partition -o` -> {name: {key: value}}."""
    out = {}
    for line in scontrol_text.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if "PartitionName" in fields:
            out[fields["PartitionName"]] = fields
    return out


def default_partition(partitions: dict[str, dict[str, str]]) -> str | None:
    return next((name for name, f in partitions.items() if f.get("Default") == "YES"), None)


def build_partition(fields: dict[str, str], sinfo_text: str) -> Partition:
    """A Partition from its `scontrol show partition -o` fields and `sinfo -h -N -p NAME -o '%N %c %G'`."""

    def limit(key):
        value = fields.get(key, "UNLIMITED")
        return None if value.upper() in ("UNLIMITED", "INFINITE") else int(value)

    nodes = {}
    for line in sinfo_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            nodes[parts[0]] = Node(parts[0], int(parts[1]), _gpus_in_gres(parts[2] if len(parts) > 2 else ""))
    return Partition(
        name=fields["PartitionName"],
        state=fields.get("State", "UP"),
        max_nodes=limit("MaxNodes"),
        max_time_min=parse_time_min(fields.get("MaxTime", "UNLIMITED")),
        max_cpus_per_node=limit("MaxCPUsPerNode"),
        nodes=list(nodes.values()),
    )


@dataclass
class Fit:
    options: list[str]  # sbatch options that lower the script's defaults to what fits
    notes: list[str]  # one line per lowered default
    nodes: int
    tasks_per_node: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node


def _fmt_time(minutes: float) -> str:
    total = int(minutes)
    return f"{total // 1440}-{total % 1440 // 60:02d}:{total % 60:02d}:00"


def fit_request(defaults: dict[str, str], given: dict[str, str], partition: Partition, what: str = "the job") -> Fit:
    """Check `given` (options at submission) over `defaults` (the script's #SBATCH) against `partition`.

    Returns the options that lower defaults to what fits; raises ResourceError listing every request of the
    user's that cannot fit, each with the option to lower and the value that fits."""
    asked = {**defaults, **given}
    try:
        nodes = int(str(asked.get("nodes", "1")).split("-")[0])
        ntasks = int(asked["ntasks"]) if "ntasks" in asked else None
        per_node = int(asked["ntasks_per_node"]) if "ntasks_per_node" in asked else math.ceil((ntasks or 1) / nodes)
        cpus = int(asked.get("cpus_per_task", "1"))
        gpus = int(str(asked.get("gpus_per_node", "0")).split(":")[-1])
    except ValueError as err:
        raise ResourceError(f"{what}: a resource option is not a number ({err})") from None
    time_min = parse_time_min(asked["time"]) if "time" in asked else None
    where = f"partition {partition.name}"
    errors, options, notes = [], [], []

    def too_much(key: str, asked_value, fits, reason: str) -> None:
        option, variable = _HOW[key]
        if key in given:
            errors.append(
                f"{what} asks {option}={asked_value} but {reason}: lower {option} to {fits} "
                f"(slurm/curriculum.sh: {variable}={fits})"
            )
        else:
            options.append(f"{option}={fits}")
            notes.append(
                f"{what}: {option}={asked_value} (the script's default) does not fit: {reason}; using {option}={fits}"
            )

    if partition.state != "UP":
        raise ResourceError(
            f"{what}: {where} is {partition.state}; submit to another one (--partition, or "
            f"SBATCH_ARGS=--partition=NAME with curriculum.sh)"
        )
    if not partition.nodes:
        raise ResourceError(f"{what}: {where} has no nodes (sinfo lists none)")
    most_nodes = min(len(partition.nodes), partition.max_nodes or len(partition.nodes))
    if nodes > most_nodes:
        too_much("nodes", nodes, most_nodes, f"{where} has {most_nodes} node(s)")
        nodes = most_nodes
    most_gpus = max(n.gpus for n in partition.nodes)
    if gpus > most_gpus:
        if most_gpus == 0:
            errors.append(
                f"{what} asks {gpus} GPU(s) per node but {where} has no GPUs: to run on CPUs submit "
                f"with --gpus-per-node=0 --ntasks-per-node=1 (slurm/curriculum.sh: GPUS_PER_NODE=0), "
                f"or submit to a GPU partition (--partition)"
            )
            gpus = 0  # and check the rest as the CPU job it would have to be
            if "ntasks_per_node" not in given:
                per_node = 1
        else:
            too_much("gpus_per_node", gpus, most_gpus, f"the nodes of {where} have at most {most_gpus} GPU(s)")
            if "gpus_per_node" not in given and "ntasks_per_node" not in given and per_node == gpus:
                options.append(f"--ntasks-per-node={most_gpus}")  # keep one task per GPU
                per_node = most_gpus
            gpus = most_gpus
    capacity = sorted(
        (min(n.cpus, partition.max_cpus_per_node or n.cpus) for n in partition.nodes if n.gpus >= gpus), reverse=True
    )
    if len(capacity) < nodes:
        errors.append(
            f"{what} asks {nodes} node(s) with {gpus} GPU(s) each but {where} has {len(capacity)} such "
            f"node(s): lower --nodes to {len(capacity)} (slurm/curriculum.sh: NODES={len(capacity)})"
        )
    elif per_node * cpus > capacity[nodes - 1]:
        cpus_on_node = capacity[nodes - 1]
        reason = (
            f"{per_node} task(s) per node x {cpus} CPU(s) = {per_node * cpus} CPUs, and "
            f"{'the' if nodes == 1 else str(nodes)} node(s) of {where} have {cpus_on_node} CPUs"
        )
        if per_node > cpus_on_node:
            errors.append(
                f"{what} asks {per_node} tasks per node but the nodes of {where} have {cpus_on_node} "
                f"CPUs: lower --ntasks-per-node to at most {cpus_on_node} (slurm/curriculum.sh: "
                f"GPUS_PER_NODE / TASKS_PER_NODE)"
            )
        else:
            too_much("cpus_per_task", cpus, cpus_on_node // per_node, reason)
    if time_min is not None and partition.max_time_min is not None and time_min > partition.max_time_min:
        too_much(
            "time",
            asked["time"],
            _fmt_time(partition.max_time_min),
            f"{where} allows at most {_fmt_time(partition.max_time_min)}",
        )
    if errors:
        raise ResourceError("\n".join(errors))
    return Fit(options=options, notes=notes, nodes=nodes, tasks_per_node=per_node)
