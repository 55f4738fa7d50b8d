"""The archive's own background work, run by the job workers (see `dicomvault.jobs`)."""
