"""``python -m fp4train.models``: print the parameter-count table of every named size."""

from . import param_count_table

print(param_count_table())
