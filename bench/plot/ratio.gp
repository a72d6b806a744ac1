# IOPS of the target relative to the baseline, per workload: bar = median
# ratio, error bar = smallest..largest per-repeat ratio. A bar at 1.0 means
# the target is as fast as the device under it.
# gnuplot -e "data='plot-ratio.dat'; out='ratio.png'; title='...'" ratio.gp
if (!exists("title")) title = "target / baseline IOPS"
set terminal pngcairo size 1200,560 font "sans,10"
set output out
set title title
set style data histogram
set style fill solid 0.7 border -1
set boxwidth 0.7
set yrange [0:*]
set ylabel "IOPS ratio (target / baseline)"
set xtics rotate by -40 scale 0 noenhanced
set rmargin 8
set grid ytics
set key off
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb "#444444"
plot data using 1:3:xtic(2) with boxes lc rgb "#3b75af", \
     '' using 1:3:4:5 with yerrorbars lc rgb "#222222" pt 0, \
     '' using 1:3:(sprintf("%.2f", $3)) with labels offset 0,0.8 font "sans,8"
