/* A small real MPI program for htex's MPI tests: every rank reports its rank, the world size,
 * its processor name, and its Slurm node's index in the job (SLURM_NODEID, set by srun for
 * the process it starts: a rank or, under mpiexec, hydra's proxy; "-" outside Slurm).
 * Not SLURMD_NODENAME: mpiexec copies its own value of that to every rank. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int rank, size, len;
    char name[MPI_MAX_PROCESSOR_NAME];
    const char *node = getenv("SLURM_NODEID");
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(name, &len);
    printf("rank %d of %d on %s nodeid %s\n", rank, size, name, node ? node : "-");
    fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);  /* every rank really joined one world */
    MPI_Finalize();
    return 0;
}
