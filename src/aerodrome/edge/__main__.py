from aerodrome.edge.server import main

main()
