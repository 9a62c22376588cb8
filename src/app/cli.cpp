// Subcommands. Each prints one clear line on stderr and exits 2 on bad usage.
#include "app/cli.hpp"

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "app/config.hpp"
#include "app/serve.hpp"
#include "core/api_keys.hpp"
#include "core/clock.hpp"
#include "storage/postgres/conninfo.hpp"
#include "storage/postgres/pg_store.hpp"
#include "storage/sqlite/sqlite_store.hpp"

namespace statetrack::app {

namespace po = boost::program_options;

namespace {

constexpr const char* usage =
    "usage: statetrack <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve     run the HTTP server (default storage: ./var/statetrack.db)\n"
    "  keys      create, list, rotate or revoke API keys stored in the database\n"
    "  migrate   apply database schema migrations and exit\n"
    "  backup    copy the database to a file while the server runs\n"
    "  version   print the version\n"
    "\n"
    "Run `statetrack <command> --help` for the options of a command.\n";

std::string default_db() {
  const char* v = std::getenv("STATETRACK_DB");
  return v != nullptr && *v != '\0' ? v : "./var/statetrack.db";
}

constexpr const char* db_help =
    "SQLite database file, or a PostgreSQL connection string (postgres://... or host=...)";

// The database named by --db, as `serve` would open it (a short-lived client: one reader, no
// event listener).
std::unique_ptr<storage::store> open_store(const std::string& db) {
  if (storage::postgres::is_conninfo(db)) {
    storage::postgres::store_options o;
    o.conninfo = db;
    o.pool_size = 1;
    o.listen = false;
    o.application_name = "statetrack-cli";
    return std::make_unique<storage::postgres::pg_store>(o);
  }
  storage::sqlite::store_options so;
  so.path = db;
  return std::make_unique<storage::sqlite::sqlite_store>(so);
}

std::string shown(const std::string& db) {
  return storage::postgres::is_conninfo(db) ? storage::postgres::redact(db) : db;
}

int keys_command(const std::vector<std::string>& args) {
  po::options_description d("statetrack keys options");
  d.add_options()("help,h", "Show this help")(
      "db", po::value<std::string>()->default_value(default_db()), db_help)(
      "name", po::value<std::string>()->default_value("key"), "Name of a new key (create)")(
      "role", po::value<std::string>()->default_value("admin"),
      "Role of a new key: admin, write, read or machine (create)")(
      "machine-id", po::value<std::string>(),
      "The machine a machine key is bound to (create, role machine)")(
      "projects", po::value<std::string>(),
      "Comma-separated project ids the key is limited to (create; not for admin keys)")(
      "expires-in-s", po::value<std::int64_t>(),
      "The key expires this many seconds from now (create)")(
      "expires-at", po::value<std::string>(), "The key expires at this ISO-8601 time (create)")(
      "grace-s", po::value<std::int64_t>()->default_value(0),
      "Seconds the old key keeps working after rotate (0: revoked at once)");
  po::options_description hidden;
  hidden.add_options()("action", po::value<std::string>())("target", po::value<std::string>());
  po::options_description all;
  all.add(d).add(hidden);
  po::positional_options_description pos;
  pos.add("action", 1).add("target", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
  } catch (const std::exception& e) {
    std::cerr << "statetrack keys: " << e.what() << "\n";
    return 2;
  }
  const std::string help =
      "usage: statetrack keys create [--name NAME] [--role ROLE] [--machine-id ID]\n"
      "                              [--projects P1,P2] [--expires-in-s N | --expires-at T]\n"
      "                              [--db FILE]\n"
      "       statetrack keys list [--db FILE]\n"
      "       statetrack keys rotate <id|prefix> [--grace-s N] [--db FILE]\n"
      "       statetrack keys revoke <id|prefix> [--db FILE]\n\n";
  if (vm.count("help") != 0 || vm.count("action") == 0) {
    std::cout << help << d;
    return vm.count("help") != 0 ? 0 : 2;
  }
  const std::string action = vm["action"].as<std::string>();
  const std::string db = vm["db"].as<std::string>();
  try {
    auto opened = open_store(db);
    storage::store& store = *opened;
    core::system_clock clock;
    if (action == "create") {
      const core::timestamp now = clock.now();
      auto role = core::parse_role(vm["role"].as<std::string>());
      if (!role) {
        std::cerr << "statetrack keys: --role must be admin, write, read or machine\n";
        return 2;
      }
      core::key_spec spec;
      spec.name = vm["name"].as<std::string>();
      spec.role = *role;
      if (vm.count("machine-id") != 0) spec.machine_id = vm["machine-id"].as<std::string>();
      if (vm.count("projects") != 0) {
        const std::string list = vm["projects"].as<std::string>();
        std::size_t i = 0;
        while (i <= list.size()) {
          std::size_t j = list.find(',', i);
          if (j == std::string::npos) j = list.size();
          if (j > i) spec.projects.push_back(list.substr(i, j - i));
          i = j + 1;
        }
      }
      if (vm.count("expires-in-s") != 0 && vm.count("expires-at") != 0) {
        std::cerr << "statetrack keys: give --expires-in-s or --expires-at, not both\n";
        return 2;
      }
      if (vm.count("expires-in-s") != 0) {
        spec.expires_at = core::timestamp{now.ms + vm["expires-in-s"].as<std::int64_t>() * 1000};
      }
      if (vm.count("expires-at") != 0) {
        spec.expires_at = core::parse_iso(vm["expires-at"].as<std::string>());
        if (!spec.expires_at) {
          std::cerr << "statetrack keys: --expires-at must be an ISO-8601 time\n";
          return 2;
        }
      }
      auto problems = core::validate_key_spec(spec, now);
      if (!problems.empty()) {
        for (const auto& p : problems)
          std::cerr << "statetrack keys: " << p << "\n";
        return 2;
      }
      auto [plain, rec] = core::create_api_key(store, spec, now);
      std::cout << plain << "\n";
      std::cerr << "created key id " << rec.id << " (prefix " << rec.prefix << ", role "
                << core::role_name(rec.role)
                << "); it is shown only once and only its SHA-256 hash is stored\n";
      return 0;
    }
    if (action == "list") {
      const core::timestamp now = clock.now();
      std::vector<core::api_key> keys;
      store.read_now([&](storage::read_view& v) { keys = v.list_api_keys(); });
      std::cout << "id\tprefix\tname\trole\tmachine\tprojects\tcreated_at\tlast_used_at\t"
                   "expires_at\tstatus\n";
      for (const auto& k : keys) {
        std::string projects;
        for (const auto& p : k.projects)
          projects += (projects.empty() ? "" : ",") + p;
        std::cout << k.id << '\t' << k.prefix << '\t' << k.name << '\t' << core::role_name(k.role)
                  << '\t' << (k.machine_id.empty() ? "-" : k.machine_id) << '\t'
                  << (projects.empty() ? "*" : projects) << '\t' << core::format_iso(k.created_at)
                  << '\t' << (k.last_used_at ? core::format_iso(*k.last_used_at) : "-") << '\t'
                  << (k.expires_at ? core::format_iso(*k.expires_at) : "-") << '\t'
                  << (k.revoked_at ? "revoked " + core::format_iso(*k.revoked_at)
                                   : std::string(core::key_state(k, now)))
                  << '\n';
      }
      return 0;
    }
    if (action == "rotate") {
      if (vm.count("target") == 0) {
        std::cerr << "statetrack keys rotate: give the key id or prefix\n";
        return 2;
      }
      const std::int64_t grace_s = vm["grace-s"].as<std::int64_t>();
      if (grace_s < 0) {
        std::cerr << "statetrack keys rotate: --grace-s must not be negative\n";
        return 2;
      }
      const std::string target = vm["target"].as<std::string>();
      std::vector<core::api_key> keys;
      store.read_now([&](storage::read_view& v) { keys = v.list_api_keys(); });
      auto found = core::find_keys(keys, target);
      if (found.empty()) {
        std::cerr << "statetrack keys rotate: no key with id or prefix " << target << "\n";
        return 1;
      }
      if (found.size() > 1) {
        std::cerr << "statetrack keys rotate: prefix " << target
                  << " matches several keys; use the id\n";
        return 2;
      }
      std::optional<core::result<core::rotation>> r;
      store.write_now([&](storage::write_txn& tx) {
        r.emplace(core::rotate_api_key(tx, found[0].id, grace_s, clock.now()));
        return r->has_value();
      });
      if (!r->has_value()) {
        std::cerr << "statetrack keys rotate: " << r->error().message << "\n";
        return 1;
      }
      const auto& rot = r->value();
      std::cout << rot.plain << "\n";
      std::cerr << "created key id " << rot.fresh.id << " (prefix " << rot.fresh.prefix
                << ") replacing key id " << rot.old.id << ", which "
                << (grace_s > 0 ? "stays valid until " + core::format_iso(*rot.old.expires_at)
                                : std::string("is revoked"))
                << "; the new key is shown only once\n";
      return 0;
    }
    if (action == "revoke") {
      if (vm.count("target") == 0) {
        std::cerr << "statetrack keys revoke: give the key id or prefix\n";
        return 2;
      }
      const std::string target = vm["target"].as<std::string>();
      std::vector<core::api_key> keys;
      store.read_now([&](storage::read_view& v) { keys = v.list_api_keys(); });
      std::vector<std::int64_t> ids;
      for (const auto& k : keys) {
        if (std::to_string(k.id) == target || k.prefix == target) ids.push_back(k.id);
      }
      if (ids.empty()) {
        std::cerr << "statetrack keys revoke: no key with id or prefix " << target << "\n";
        return 1;
      }
      if (ids.size() > 1) {
        std::cerr << "statetrack keys revoke: prefix " << target
                  << " matches several keys; use the id\n";
        return 2;
      }
      bool revoked = false;
      store.write_now([&](storage::write_txn& tx) {
        revoked = tx.revoke_api_key(ids[0], clock.now());
        return true;
      });
      std::cout << (revoked ? "revoked key " : "key already revoked: ") << ids[0] << "\n";
      return 0;
    }
    std::cerr << "statetrack keys: unknown action '" << action << "'\n" << help;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "statetrack keys: " << e.what() << "\n";
    return 1;
  }
}

int db_command(const std::string& name, const std::vector<std::string>& args) {
  po::options_description d("statetrack " + name + " options");
  d.add_options()("help,h", "Show this help")(
      "db", po::value<std::string>()->default_value(default_db()), db_help);
  po::options_description hidden;
  hidden.add_options()("dest", po::value<std::string>());
  po::options_description all;
  all.add(d).add(hidden);
  po::positional_options_description pos;
  pos.add("dest", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
  } catch (const std::exception& e) {
    std::cerr << "statetrack " << name << ": " << e.what() << "\n";
    return 2;
  }
  if (vm.count("help") != 0) {
    std::cout << (name == "backup" ? "usage: statetrack backup <dest-file> [--db FILE]\n\n"
                                   : "usage: statetrack migrate [--db FILE]\n\n")
              << d;
    return 0;
  }
  const std::string db = vm["db"].as<std::string>();
  try {
    const bool postgres = storage::postgres::is_conninfo(db);
    if (name == "migrate") {
      auto applied = postgres ? storage::postgres::pg_store::migrate(db)
                              : storage::sqlite::sqlite_store::migrate(db);
      if (applied.empty()) {
        std::cout << "database " << shown(db) << " is up to date\n";
      } else {
        for (int v : applied)
          std::cout << "applied migration " << v << "\n";
      }
      return 0;
    }
    if (postgres) {
      std::cerr << "statetrack backup: copies SQLite files; back PostgreSQL up with its own "
                   "tools (pg_dump, pg_basebackup, continuous archiving)\n";
      return 2;
    }
    if (vm.count("dest") == 0) {
      std::cerr << "statetrack backup: give the destination file\n";
      return 2;
    }
    storage::sqlite::sqlite_store::backup(db, vm["dest"].as<std::string>());
    std::cout << "backed up " << db << " to " << vm["dest"].as<std::string>() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "statetrack " << name << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << usage;
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "version" || cmd == "--version") {
    std::cout << "statetrack " << ST_VERSION << "\n";
    return 0;
  }
  if (cmd == "serve") {
    auto parsed = parse_serve_args(args);
    if (!parsed.cfg) return parsed.exit_code;
    return serve(*parsed.cfg);
  }
  if (cmd == "keys") return keys_command(args);
  if (cmd == "migrate" || cmd == "backup") return db_command(cmd, args);
  std::cerr << "statetrack: unknown command '" << cmd << "'\n\n" << usage;
  return 2;
}

}  // namespace statetrack::app
