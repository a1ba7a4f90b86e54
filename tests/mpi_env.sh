# Sourced by the scripts that launch mpirun: Open MPI refuses to run as root unless told it may
# (CI and containers run as root), and a 2-core machine needs oversubscription for 4 ranks.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
# Quiet the shared-memory transport's warnings in containers without a real /dev/shm size.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# Spinning OpenMP threads waste the cores when several ranks (or ctest -j tests) share them:
# threads that wait should sleep.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
