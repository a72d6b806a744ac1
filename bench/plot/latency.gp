# Completion latency per workload, target beside baseline: p50 (solid) and
# p99 (light) in microseconds, log scale.
# gnuplot -e "data='plot-latency.dat'; out='latency.png'; title='...'" latency.gp
if (!exists("title")) title = "completion latency (µs)"
set terminal pngcairo size 1200,560 font "sans,10"
set output out
set title title
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set ylabel "latency (µs, log scale)"
set xtics rotate by -40 scale 0 noenhanced
set rmargin 8
set grid ytics
set key top left
plot data using 3:xtic(2) title "target p50" lc rgb "#3b75af", \
     '' using 4 title "baseline p50" lc rgb "#e1812c", \
     '' using 5 title "target p99" lc rgb "#a6c4e0", \
     '' using 6 title "baseline p99" lc rgb "#f2c08f"
