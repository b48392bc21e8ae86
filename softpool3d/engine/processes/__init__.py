"""Processes and devices: process groups and SLURM's variables, the run directory's lock, preemption
signals and the stall watch, DataLoaders, their workers and samplers, backends and the precision policy."""
