"""What a run shows: the run log (epoch lines, metrics, progress, sample grids), trackers, the HTML report, and the
evaluation of adapter configurations on fixed seeds."""
