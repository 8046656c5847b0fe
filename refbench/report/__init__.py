"""Reports: leaderboards, ablation tables, curves and galleries as a static site and exports."""
