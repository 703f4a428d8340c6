package dev.projector;

import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;

/**
 * Runs Neo4j Community embedded with Bolt on loopback until SIGTERM.
 *
 * <p>Configuration comes from system properties so dev/stack can override every
 * port and folder: neo4j.home, neo4j.bolt.host, neo4j.bolt.port, neo4j.pagecache.mb.
 * Auth is off: the server listens on loopback only (see docs/decisions.md).
 */
public final class Neo4jLauncher {
  private Neo4jLauncher() {}

  public static void main(String[] args) throws Exception {
    Path home = Path.of(System.getProperty("neo4j.home", ".local/neo4j"));
    String host = System.getProperty("neo4j.bolt.host", "127.0.0.1");
    int port = Integer.parseInt(System.getProperty("neo4j.bolt.port", "7687"));
    long pageCacheMb = Long.parseLong(System.getProperty("neo4j.pagecache.mb", "512"));

    DatabaseManagementService dbms =
        new DatabaseManagementServiceBuilder(home)
            .setConfig(BoltConnector.enabled, true)
            .setConfig(BoltConnector.listen_address, new SocketAddress(host, port))
            .setConfig(HttpConnector.enabled, false)
            .setConfig(GraphDatabaseSettings.auth_enabled, false)
            .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(pageCacheMb))
            .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
            .build();

    CountDownLatch stopped = new CountDownLatch(1);
    // SIGTERM runs shutdown hooks: this is what makes `dev/stack down` a clean shutdown
    // (transaction logs flushed, no recovery on the next start).
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  System.out.println("neo4j-launcher: shutting down");
                  dbms.shutdown();
                  System.out.println("neo4j-launcher: stopped cleanly");
                  stopped.countDown();
                },
                "neo4j-shutdown"));

    GraphDatabaseService db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
    // Fail at start, not at first query, if the database did not come up.
    db.executeTransactionally("RETURN 1");
    System.out.println("neo4j-launcher: ready bolt://" + host + ":" + port + " home=" + home.toAbsolutePath());
    stopped.await();
  }
}
