"""Every process of a data-parallel fit must fit the same data with the same parameters:
checked when fit starts, so that a mismatch is refused in every process instead of training
on different samples or leaving a collective waiting."""
from numbers import Number

from .resume import UNFINGERPRINTED, data_fingerprint, describe


def check_agreement(team, data, params):
    """Raise the same ValueError in every process of ``team`` when they were given different
    data (shape, dtype, a hash of rows spread over them) or different plain-valued
    parameters; one process: nothing to check."""
    if team.world == 1:
        return
    # Only plain values: modules and callables differ between processes by their weights or
    # addresses although they describe the same fit.
    mine = data_fingerprint(data)
    mine.update({f"parameter {name}": describe(value)
                 for name, value in sorted(params.items())
                 if name not in UNFINGERPRINTED
                 and (value is None or isinstance(value, (Number, str)))})
    everyone = team.gather_object(mine)
    differences = []
    for key in dict.fromkeys(key for found in everyone for key in found):
        values = [found.get(key, "(absent)") for found in everyone]
        if len(set(values)) > 1:
            differences.append(f"{key}: " + ", ".join(
                f"{value} in process {rank}" for rank, value in enumerate(values)))
    if differences:
        raise ValueError(
            f"The {team.world} processes of this data-parallel fit were given different data "
            "or parameters: " + "; ".join(differences) + ". Every process must call fit "
            "with the same X and the same parameters: each trains on its share of every "
            "batch of the whole data.")
