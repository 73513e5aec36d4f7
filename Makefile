# libdmio: build, install, test.
#   make            library (.so with soname, .a) and include/dm_io.h
#   make demo       build everything and run the demo on temporary files
#   make test       every test (installs missing system packages when root)
#   make install    PREFIX=/usr/local DESTDIR=   (make uninstall removes)

VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
MAJOR    := $(word 1,$(subst ., ,$(VERSION)))
PREFIX   ?= /usr/local
LIBDIR   ?= $(PREFIX)/lib
INCDIR   ?= $(PREFIX)/include
PCDIR    ?= $(LIBDIR)/pkgconfig
DESTDIR  ?=
CC       ?= cc
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Werror
BUILD    := build
SONAME   := libdmio.so.$(MAJOR)
SOFILE   := libdmio.so.$(VERSION)
CARGO    ?= cargo
CBINDGEN_VERSION := 0.29.4
CBINDGEN := $(CURDIR)/.tools/bin/cbindgen
RUST_SRC := $(shell find src -name '*.rs') Cargo.toml build.rs dmio.map

.PHONY: all lib header check-header demo test test-rust test-c test-header test-install \
        deps install uninstall clean lint

# The header is checked in; `make header` regenerates it, `make check-header`
# (part of `make test`) fails when it is stale.
all: lib

$(BUILD)/$(SOFILE) $(BUILD)/libdmio.a: $(RUST_SRC)
	$(CARGO) build --release --locked
	@mkdir -p $(BUILD)
	cp target/release/libdmio.so $(BUILD)/$(SOFILE)
	ln -sf $(SOFILE) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libdmio.so
	cp target/release/libdmio.a $(BUILD)/libdmio.a

lib: $(BUILD)/$(SOFILE)

$(CBINDGEN):
	$(CARGO) install --locked --quiet cbindgen --version $(CBINDGEN_VERSION) --root $(CURDIR)/.tools

header: $(CBINDGEN)
	$(CBINDGEN) --quiet --config cbindgen.toml --crate dmio --output include/dm_io.h

# Fails when the checked-in header differs from a fresh generation.
check-header: $(CBINDGEN)
	@$(CBINDGEN) --quiet --config cbindgen.toml --crate dmio --output $(BUILD)/dm_io.h.fresh
	@if cmp -s $(BUILD)/dm_io.h.fresh include/dm_io.h; then \
		echo "header: include/dm_io.h matches cbindgen $(CBINDGEN_VERSION)"; \
	else \
		diff -u include/dm_io.h $(BUILD)/dm_io.h.fresh | head -40; \
		echo "header: include/dm_io.h is stale: run 'make header' and commit it"; exit 1; \
	fi

$(BUILD)/demo: examples/demo.c include/dm_io.h $(BUILD)/$(SOFILE)
	$(CC) -std=c99 $(WARN) -pedantic $(CFLAGS) -Iinclude $< -L$(BUILD) -ldmio -lpthread \
		-Wl,-rpath,'$$ORIGIN' -o $@

demo: all $(BUILD)/demo
	$(BUILD)/demo

# Installs missing system packages (as root); otherwise says what is missing.
deps:
	@./scripts/deps.sh

test: deps all check-header test-rust test-header test-c test-install
	@echo "make test: all suites passed"

test-rust:
	$(CARGO) test --release --locked

test-c: all
	@$(MAKE) --no-print-directory -C c-tests run

test-header: all
	@./scripts/test-header.sh

test-install: all
	@./scripts/test-install.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

install: all
	install -D -m 0755 $(BUILD)/$(SOFILE) $(DESTDIR)$(LIBDIR)/$(SOFILE)
	ln -sf $(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libdmio.so
	install -D -m 0644 $(BUILD)/libdmio.a $(DESTDIR)$(LIBDIR)/libdmio.a
	install -D -m 0644 include/dm_io.h $(DESTDIR)$(INCDIR)/dm_io.h
	@mkdir -p $(DESTDIR)$(PCDIR)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' \
		pkgconfig/dmio.pc.in > $(DESTDIR)$(PCDIR)/dmio.pc
	chmod 0644 $(DESTDIR)$(PCDIR)/dmio.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	      $(DESTDIR)$(LIBDIR)/libdmio.so $(DESTDIR)$(LIBDIR)/libdmio.a \
	      $(DESTDIR)$(INCDIR)/dm_io.h $(DESTDIR)$(PCDIR)/dmio.pc

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
	@$(MAKE) --no-print-directory -C c-tests clean
