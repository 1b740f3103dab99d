# The deterministic simulation (docs/reference/simulation.md): the runtime
# (libdsys_sim: the scheduler that replaces the pthread, time and random
# functions of the program linking it, the network model, the reference
# deployment and its checkers) and dsys-sim, the command line. Simulation
# programs link the library statically (libdsys_internal) with -rdynamic, so
# that the runtime's definitions also serve the shared libraries (SQLite).
noinst_LTLIBRARIES += libdsys_sim.la
libdsys_sim_la_SOURCES = tools/sim/sim.h tools/sim/sched.c tools/sim/net.h tools/sim/net.c \
	tools/sim/world.h tools/sim/world.c tools/sim/disk.h tools/sim/disk.c
libdsys_sim_la_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/sim
libdsys_sim_la_LIBADD = -ldl
SIM_LIBS = libdsys_sim.la libdsys_internal.la $(DEP_LIBS) -ldl
noinst_PROGRAMS += tools/sim/dsys-sim
tools_sim_dsys_sim_SOURCES = tools/sim/dsys-sim.c tools/sim/mini.c tools/sim/deploy.c \
	tools/sim/scenarios.h
tools_sim_dsys_sim_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/sim
tools_sim_dsys_sim_LDADD = $(SIM_LIBS)
tools_sim_dsys_sim_LDFLAGS = $(AM_LDFLAGS) -export-dynamic
# A user's own service in a simulation (docs/reference/simulation.md).
noinst_PROGRAMS += examples/sim-counter
examples_sim_counter_SOURCES = examples/sim-counter.c
examples_sim_counter_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/sim
examples_sim_counter_LDADD = $(SIM_LIBS)
examples_sim_counter_LDFLAGS = $(AM_LDFLAGS) -export-dynamic

# A long sweep (not part of make check): SIM_SEEDS seeds of the deployment
# under every fault, SIM_JOBS at a time, then each planted bug over
# SIM_PLANT_SEEDS seeds. Prints the failing seeds and the rates.
SIM_SEEDS = 2000
SIM_JOBS = 2
SIM_STEPS = 40
SIM_PLANT_SEEDS = 200
sim-sweep: tools/sim/dsys-sim$(EXEEXT)
	tools/sim/dsys-sim --seeds 1-$(SIM_SEEDS) -j $(SIM_JOBS) --steps $(SIM_STEPS)
	-tools/sim/dsys-sim --seeds 1-$(SIM_PLANT_SEEDS) -j $(SIM_JOBS) --steps $(SIM_STEPS) --plant retry-post | tail -1
	-tools/sim/dsys-sim --seeds 1-$(SIM_PLANT_SEEDS) -j $(SIM_JOBS) --steps $(SIM_STEPS) --plant stale-cache | tail -1
	-tools/sim/dsys-sim --seeds 1-$(SIM_PLANT_SEEDS) -j $(SIM_JOBS) --steps $(SIM_STEPS) --plant sync-normal | tail -1
	-tools/sim/dsys-sim --seeds 1-$(SIM_PLANT_SEEDS) -j $(SIM_JOBS) --steps $(SIM_STEPS) --plant no-fencing | tail -1
	-tools/sim/dsys-sim --seeds 1-$(SIM_PLANT_SEEDS) -j $(SIM_JOBS) --steps $(SIM_STEPS) --plant ignore-health | tail -1
.PHONY: sim-sweep
