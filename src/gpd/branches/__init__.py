"""Channel-Branch Reparameterization building blocks: six-branch 3x3 convolutions.

:func:`add_branches` turns every 3x3, stride-1, padding-1 convolution of a model into
an :class:`OREPAConv2d` (a per-channel-scaled sum of six linear branches, computed as
one merged kernel); :func:`merge_branches` turns them back into plain convolutions.
The expansion rule of OREPAConv2d (``gpd.expand`` builds a dynamic teacher whose
merged kernels are the IR of the student's) and the branch kind "orepa" are registered
by :func:`register_branch_rules`, which the rule set runs at their first lookup
(gpd.expansion.pending): importing this package registers nothing.
"""

from gpd.branches.convert import add_branches, count_branch_blocks, is_branchable, merge_branches
from gpd.branches.expansion_rule import register_branch_rules
from gpd.branches.orepa import OREPAConv2d

__all__ = [
    "OREPAConv2d",
    "add_branches",
    "count_branch_blocks",
    "is_branchable",
    "merge_branches",
    "register_branch_rules",
]
